/**
 * Image folders: `root/<class>/<image>` (class folders sorted by name become labels 0..K-1, as torchvision's
 * ImageFolder numbers them) or a flat folder of images (unlabelled). PNG and JPEG files are decoded with sharp,
 * resized so that the shorter side is the model's image size, centre-cropped to a square and converted to grey
 * or RGB. A root holding `train/` and `test/` (or `val/`) folders is read per split.
 */
import type { Dirent } from 'node:fs';
import { readdir, readlink, stat } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { extname, join } from 'node:path';
import { TarflowError } from './errors.js';

/** File extensions decoded as images (case-insensitive); every other file is skipped. */
export const IMAGE_EXTENSIONS: readonly string[] = ['.png', '.jpg', '.jpeg'];

export const DEFAULT_IMAGE_SIZE = 32;
export const DEFAULT_IMAGE_CHANNELS = 3;

export interface ImageFolderOptions {
  /** Side of the square output images (default 32). */
  size?: number;
  /** 1 (grey) or 3 (RGB; default). */
  channels?: number;
  /** Which split to read when the root holds `train/` and `test/` (or `val/`) folders (default 'train'). */
  split?: 'train' | 'test';
  /** Called after each decoded image with (images done, total). */
  onProgress?: (done: number, total: number) => void;
  /** Images decoded at the same time (default: the number of CPUs, at most 16). */
  concurrency?: number;
  /** Stops the load (ERR_TARFLOW_ABORTED) between images. */
  signal?: AbortSignal;
}

export interface ImageFolderListing {
  /** The folder actually read (root itself, or its split folder). */
  root: string;
  files: string[];
  /** Labels in class-folder layout, null for a flat folder. */
  labels: Int32Array | null;
  classNames: string[] | undefined;
}

export interface ImageFolderData extends ImageFolderListing {
  /** count * channels * size * size bytes, channel-first. */
  images: Uint8Array;
  count: number;
  channels: number;
  size: number;
}

const TEST_FOLDER_NAMES = ['test', 'val', 'valid', 'validation'];

export function isImageFile(name: string): boolean {
  return IMAGE_EXTENSIONS.includes(extname(name).toLowerCase());
}

interface FolderEntries {
  files: string[];
  dirs: string[];
}

/** Non-hidden entries sorted by code unit, so the class order (hence the labels) is the same on every machine. */
async function folderEntries(dir: string): Promise<FolderEntries> {
  let list: Dirent[];
  try {
    list = await readdir(dir, { withFileTypes: true });
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const hint = code === 'ENOENT' ? 'the folder does not exist; check the path' : code === 'ENOTDIR' ? 'it is not a folder' : 'check the path and permissions';
    throw new TarflowError('ERR_TARFLOW_DATA', `${dir}: cannot list the image folder (${code ?? 'error'}): ${hint}`, { cause: err });
  }
  const files: string[] = [];
  const dirs: string[] = [];
  for (const e of list) {
    // dot files are editor, OS and notebook litter (.DS_Store, .ipynb_checkpoints), never data
    if (e.name.startsWith('.')) continue;
    let isDir = e.isDirectory();
    let isFile = e.isFile();
    if (e.isSymbolicLink()) {
      const path = join(dir, e.name);
      let s;
      try {
        s = await stat(path);
      } catch (err) {
        // skipped, the link could drop an image or a whole class from the dataset unnoticed
        const code = (err as NodeJS.ErrnoException).code;
        const target = await readlink(path).then((t) => ` (to ${t})`, () => '');
        const why = code === 'ENOENT' ? `points nowhere${target}` : `cannot be followed${target} (${code ?? 'error'})`;
        throw new TarflowError('ERR_TARFLOW_DATA', `${path}: the symbolic link ${why}; make it point to the image or folder meant, or remove it`, { cause: err });
      }
      isDir = s.isDirectory();
      isFile = s.isFile();
    }
    if (isDir) dirs.push(e.name);
    else if (isFile) files.push(e.name);
  }
  // plain code-unit order, like Python's sorted(); localeCompare would vary with the machine's locale
  const byCodeUnit = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);
  return { files: files.sort(byCodeUnit), dirs: dirs.sort(byCodeUnit) };
}

/** The folder holding `split` when `root` is split into train/ and test/ (or val/) folders, else `root`. */
async function splitFolder(root: string, top: FolderEntries, split: 'train' | 'test'): Promise<string> {
  if (top.files.some(isImageFile) || !top.dirs.includes('train')) return root;
  const testName = TEST_FOLDER_NAMES.find((n) => top.dirs.includes(n));
  if (!testName) return root;
  return join(root, split === 'train' ? 'train' : testName);
}

/** Finds the images of a folder and their labels without decoding anything. */
export async function listImageFolder(root: string, split: 'train' | 'test' = 'train'): Promise<ImageFolderListing> {
  const top = await folderEntries(root);
  const dir = await splitFolder(root, top, split);
  const entries = dir === root ? top : await folderEntries(dir);
  const looseImages = entries.files.filter(isImageFile);
  if (looseImages.length > 0) {
    if (entries.dirs.length > 0) {
      // silently dropping either the loose files or the folders would train on a different set than intended
      const classDirs = [];
      for (const d of entries.dirs) if ((await folderEntries(join(dir, d))).files.some(isImageFile)) classDirs.push(d);
      if (classDirs.length > 0) {
        throw new TarflowError('ERR_TARFLOW_DATA', `${dir}: holds both loose images (${looseImages[0]}, ...) and class folders (${classDirs.slice(0, 3).join(', ')}${classDirs.length > 3 ? ', ...' : ''}); ` +
          'move the loose images into a class folder for labelled data, or move the folders out for an unlabelled flat folder');
      }
    }
    return { root: dir, files: looseImages.map((f) => join(dir, f)), labels: null, classNames: undefined };
  }
  const files: string[] = [];
  const labels: number[] = [];
  const classNames: string[] = [];
  // A test split is labelled by the train split's classes, matched by name: numbered on its own, a class missing
  // from test/ would shift every later label, and a model would be scored against the wrong classes.
  const trainClasses = dir !== root && split === 'test' ? (await folderEntries(join(root, 'train'))).dirs : null;
  if (trainClasses && trainClasses.length > 0) {
    const unknown = entries.dirs.find((cls) => !trainClasses.includes(cls));
    if (unknown !== undefined) {
      throw new TarflowError('ERR_TARFLOW_DATA', `${join(dir, unknown)}: test class '${unknown}' has no folder in ${join(root, 'train')}/, so no label; ` +
        'rename it to its train class or remove it');
    }
  }
  for (const cls of entries.dirs) {
    const sub = await folderEntries(join(dir, cls));
    const images = sub.files.filter(isImageFile);
    if (images.length === 0) {
      const nested = sub.dirs.length > 0 ? `; it holds only folders (${sub.dirs.slice(0, 3).join(', ')}), but images must sit directly in ${join(dir, '<class>')}/` : '';
      throw new TarflowError('ERR_TARFLOW_DATA', `${join(dir, cls)}: class folder '${cls}' has no PNG or JPEG images${nested}; add images or remove the folder (an empty class would shift every later label)`);
    }
    const label = trainClasses && trainClasses.length > 0 ? trainClasses.indexOf(cls) : classNames.length;
    for (const f of images) {
      files.push(join(dir, cls, f));
      labels.push(label);
    }
    classNames.push(cls);
  }
  if (files.length === 0) {
    const skipped = entries.files.length;
    throw new TarflowError('ERR_TARFLOW_DATA', `${dir}: the folder has no PNG or JPEG images${skipped ? ` (${skipped} other file${skipped === 1 ? '' : 's'} skipped, e.g. ${entries.files[0]})` : ''}; ` +
      `put images (${IMAGE_EXTENSIONS.join(', ')}) in ${dir}/<class>/ or directly in ${dir}/`);
  }
  return { root: dir, files, labels: Int32Array.from(labels), classNames: trainClasses && trainClasses.length > 0 ? trainClasses : classNames };
}

type SharpFactory = (typeof import('sharp'))['default'];
let sharpLoading: Promise<SharpFactory> | undefined;

// Imported on first use: libvips is large, and users of MNIST or array files should neither pay for loading it nor
// fail when their platform has no prebuilt sharp binary.
async function loadSharp(): Promise<SharpFactory> {
  sharpLoading ??= import('sharp').then(
    (m) => m.default,
    (err: unknown) => {
      sharpLoading = undefined;
      throw new TarflowError('ERR_TARFLOW_DATA', `image folders need the 'sharp' package, which could not be loaded (${(err as Error).message.split('\n')[0]}); ` +
        "run 'npm install sharp' in the tarflow folder (see https://sharp.pixelplumbing.com/install for unusual platforms)", { cause: err });
    },
  );
  return sharpLoading;
}

function checkTarget(size: number, channels: number): void {
  if (!Number.isInteger(size) || size < 1 || size > 4096) {
    throw new TarflowError('ERR_TARFLOW_INVALID_ARGUMENT', `image size must be an integer from 1 to 4096, got ${size}; pass the model's image side (size; --image-size on the command line)`);
  }
  if (channels !== 1 && channels !== 3) {
    throw new TarflowError('ERR_TARFLOW_INVALID_ARGUMENT', `channels must be 1 (grey) or 3 (RGB), got ${channels}; pass channels (--channels) 1 or 3`);
  }
}

/**
 * Decodes one PNG or JPEG file into `out` (channels * size * size bytes, channel-first): EXIF orientation applied,
 * shorter side resized to `size`, centre-cropped, alpha dropped, then RGB or grey.
 */
export async function decodeImageFile(path: string, size: number, channels: number, out?: Uint8Array): Promise<Uint8Array> {
  checkTarget(size, channels);
  const sharp = await loadSharp();
  const plane = size * size;
  const dst = out ?? new Uint8Array(channels * plane);
  if (dst.length !== channels * plane) {
    throw new TarflowError('ERR_TARFLOW_INVALID_ARGUMENT', `decodeImageFile: the output buffer has ${dst.length} bytes, not ${channels} x ${size} x ${size}; allocate channels * size * size bytes`);
  }
  let data: Buffer;
  let got: number;
  try {
    // failOn 'error' refuses truncated and undecodable files but, like PIL, accepts libjpeg's warnings ("extraneous
    // bytes before marker"), which real photo collections contain and which sharp's default would turn into a failed
    // load. Alpha is dropped rather than composited, as PIL's convert('RGB') does, so pixels match torchvision's.
    const r = await sharp(path, { autoOrient: true, failOn: 'error' })
      .resize(size, size, { fit: 'cover', position: 'centre' })
      .removeAlpha()
      .toColourspace('srgb')
      .raw({ depth: 'uchar' })
      .toBuffer({ resolveWithObject: true });
    data = r.data;
    got = r.info.channels;
    if (r.info.width !== size || r.info.height !== size) throw new Error(`decoded to ${r.info.width} x ${r.info.height} instead of ${size} x ${size}`);
  } catch (err) {
    const why = ((err as Error).message ?? String(err)).split('\n')[0];
    throw new TarflowError('ERR_TARFLOW_FILE_FORMAT', `${path}: cannot decode the image (${why}); the file is corrupt or not really a ${extname(path).slice(1).toUpperCase() || 'PNG/JPEG'} — re-save it or delete it from the folder`, { cause: err });
  }
  if (got !== 3) {
    throw new TarflowError('ERR_TARFLOW_FILE_FORMAT', `${path}: decoded to ${got} channels instead of RGB; re-save the image as an 8-bit RGB or grey PNG/JPEG`);
  }
  if (channels === 3) {
    for (let p = 0; p < plane; p++) {
      dst[p] = data[3 * p]!;
      dst[plane + p] = data[3 * p + 1]!;
      dst[2 * plane + p] = data[3 * p + 2]!;
    }
  } else {
    // ITU-R 601 luma with PIL's fixed-point rounding (convert('L')), so grey images equal torchvision's; libvips'
    // own b-w conversion goes through CIE L* and gives visibly different values (pure red: 127 against 76)
    for (let p = 0; p < plane; p++) {
      dst[p] = (data[3 * p]! * 19595 + data[3 * p + 1]! * 38470 + data[3 * p + 2]! * 7471 + 0x8000) >>> 16;
    }
  }
  return dst;
}

/** Lists and decodes an image folder with bounded concurrency; the first file that fails to decode fails the load. */
export async function loadImageFolder(root: string, options: ImageFolderOptions = {}): Promise<ImageFolderData> {
  const size = options.size ?? DEFAULT_IMAGE_SIZE;
  const channels = options.channels ?? DEFAULT_IMAGE_CHANNELS;
  checkTarget(size, channels);
  const concurrency = options.concurrency ?? Math.min(16, availableParallelism());
  if (!Number.isInteger(concurrency) || concurrency < 1) {
    throw new TarflowError('ERR_TARFLOW_INVALID_ARGUMENT', `concurrency must be a positive integer, got ${concurrency}`);
  }
  const listing = await listImageFolder(root, options.split ?? 'train');
  await loadSharp();
  const count = listing.files.length;
  const per = channels * size * size;
  const bytes = count * per;
  // Checked before allocating, so a huge folder fails with advice rather than a RangeError from V8. 4 GiB is the
  // largest Buffer on Node.js 20 (the oldest supported); kept on later versions so a folder loads on all of them.
  const maxBytes = 2 ** 32;
  if (bytes > maxBytes) {
    throw new TarflowError('ERR_TARFLOW_DATA', `${listing.root}: ${count} images of ${channels} x ${size} x ${size} need ${(bytes / 2 ** 30).toFixed(1)} GiB, more than one buffer can hold (4 GiB); ` +
      'use a smaller imageSize (--image-size) or split the folder');
  }
  const images = new Uint8Array(bytes);
  let next = 0;
  let done = 0;
  let failure: unknown;
  options.onProgress?.(0, count);
  // a fixed pool of workers pulling indices: memory stays bounded by `concurrency` decoded originals, and after a
  // failure no new decode starts while those already running finish before the error is thrown
  const worker = async () => {
    while (failure === undefined && next < count) {
      const i = next++;
      try {
        if (options.signal?.aborted) throw new TarflowError('ERR_TARFLOW_ABORTED', `loading ${listing.root} was aborted after ${done} of ${count} images`);
        await decodeImageFile(listing.files[i]!, size, channels, images.subarray(i * per, (i + 1) * per));
        done++;
        // inside the try, so that a callback that throws stops the other workers too
        options.onProgress?.(done, count);
      } catch (err) {
        failure ??= err;
        return;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, count) }, worker));
  if (failure !== undefined) throw failure;
  return { ...listing, images, count, channels, size };
}
