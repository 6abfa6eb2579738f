/**
 * Batch offline generation: thousands of samples written to disk in shards (PNG files or .npz archives of
 * uint8 (N, H, W, C) under `arr_0`, the layout FID tools read), with a manifest that makes the run resumable.
 * Image k depends only on (seed, k) and its label, so shards are the same whatever the batch size, and a resumed
 * run skips the shards the manifest lists as finished (and draws again those whose files it finds missing or cut).
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { open, readdir, readFile, rm, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { atomicTempTarget, checkFolderCreatable, checkFolderEmpty, makeFolder, writeFileAtomic } from './atomic.js';
import { isLockFileName, lockFolder, type FolderLock } from './folder-lock.js';
import { describeFileKind, statFileForParsing } from './read-file.js';
import { configFromMetadata, loadModel } from './checkpoint.js';
import { fromReferenceConfig, toReferenceConfig } from './config.js';
import { PRECISIONS, type DeviceOption, type Precision } from './backend.js';
import { TarflowError } from './errors.js';
import { writeNpz } from './npz.js';
import { imageGrid, nameDigitsFor, pngFileName, writePng } from './png.js';
import { GENERATE_OPTIONS, checkDenoisable, defaultTemperature, generate, resolveGenerateOptions, resolveLabels, type ReverseOptions } from './sampling.js';
import { REVERSE_OPTIONS } from './model.js';
import { pretrainedPath, shippedModel, withSamplingDefaults } from './pretrained.js';
import { readSafetensors } from './safetensors.js';
import { RateMeter, abortSignalOf, checkCheckpointSpec, type TaskContext } from './tasks.js';
import { checkBoolean, checkKnownKeys, checkNumber, checkObject, checkOneOf, checkString, describeValue, optional, pickKeys, validationError, optionNames, type OptionNames } from './validate.js';

/**
 * With `resume`, every option the manifest records (checkpoint, count, format, shardSize, labels, denoiseSigma,
 * seed, guidance, guideWhat, attnTemp, annealed, temperature, precision, kvCache) may be left out: the run's own
 * value is taken. One given again must agree with it, since it decides the images; batchSize, device and
 * maxRedraws do not, and may change.
 */
export interface GenerateSpec extends ReverseOptions {
  /** A .safetensors file, or the name of a shipped model ('mnist-cond', 'mnist-bpd'; see loadModel). Required unless resuming. */
  checkpoint?: string;
  config?: Record<string, unknown>;
  /** Number of images. Required unless resuming. */
  count?: number;
  /** Output folder: shards plus manifest.json. A new run needs a new or empty one. */
  out: string;
  /** 'png' (one file per image) or 'npz' (one archive per shard). */
  format?: 'png' | 'npz';
  /** Images per shard (default 1000). */
  shardSize?: number;
  batchSize?: number;
  /** One class for every image, a list (one per image; an Int32Array too), or undefined: classes in turn (uniform over classes). */
  labels?: number | number[] | Int32Array;
  denoiseSigma?: number;
  seed?: number;
  /** Scale of the latent noise (GenerateOptions.temperature); default: defaultTemperature (0.7 for likelihood models, else 1). */
  temperature?: number;
  device?: DeviceOption;
  /** Matrix products of the sampler (see ModelOptions.precision); the KV cache follows unless kvCache is given. */
  precision?: Precision;
  /** Continue the run described by out/manifest.json (refused when there is none). */
  resume?: boolean;
  /**
   * Redraws of a sample that comes out NaN/Inf before the run fails (default 3). Not recorded in the manifest: every
   * written sample succeeded within the old limit, and draws the same image under a higher one, so a failed run
   * can resume with more.
   */
  maxRedraws?: number;
}

const GENERATE_SPEC = optionNames<GenerateSpec>()({
  ...REVERSE_OPTIONS, checkpoint: true, config: true, count: true, out: true, format: true, shardSize: true, batchSize: true, labels: true,
  denoiseSigma: true, seed: true, temperature: true, device: true, precision: true, resume: true, maxRedraws: true,
});

/** The SHA-256 of a file, read in chunks (a checkpoint can be gigabytes). */
async function fileSha256(path: string): Promise<string> {
  // Looked at first: reading a FIFO given as the checkpoint would wait for a writer for good.
  await statFileForParsing(path, 'checkpoint');
  return filesSha256([path]);
}

/** The SHA-256 of files' bytes one after another (a shard's files, in order). */
async function filesSha256(paths: readonly string[]): Promise<string> {
  const hash = createHash('sha256');
  for (const path of paths) for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

export interface ShardRecord {
  index: number;
  start: number;
  count: number;
  files: string[];
  /** Samples that came out NaN/Inf and were redrawn: their index and the noise stream attempt used. */
  redraws: Array<{ index: number; attempt: number }>;
  /**
   * SHA-256 of the shard's files' bytes, in order, as written: a resume draws again a shard whose files changed
   * since (another run's file of the same name passes every check of its form). Absent in older manifests.
   */
  sha256?: string;
}

export interface Manifest {
  format: 'tarflow-generate';
  version: 1;
  checkpoint: string;
  /**
   * SHA-256 of the checkpoint file: a resume from other weights (a later save of a run still training, or another
   * file with the same architecture) would mix two models' images, so it is refused. Absent in older manifests.
   */
  checkpointSha256?: string;
  /** The backend that drew the shards ('cpu' or 'cuda'): a resume on the other one is told that they differ by rounding. */
  device?: string;
  /**
   * With bf16 products, the kernel that ran them ('amx', 'avx512bf16' or 'reference' on the CPU, 'wgmma' or 'mma' on
   * the GPU; TARFLOW_CPU_GEMM / TARFLOW_CUDA_GEMM): another one rounds differently, which a resume is told.
   */
  bf16Kernel?: string;
  config: ReturnType<typeof toReferenceConfig>;
  /**
   * PNG runs: the digits of the index in each file name (that of count - 1, at least 6), so that names sort in image
   * order. Absent in older manifests, whose names have 6.
   */
  nameDigits?: number;
  options: Omit<GenerateSpec, 'resume' | 'device' | 'batchSize' | 'checkpoint' | 'config' | 'out' | 'count'> & { count: number };
  count: number;
  shardSize: number;
  shards: ShardRecord[];
  complete: boolean;
}

export interface GenerateSummary {
  out: string;
  images: number;
  /** Images drawn by this call, those of shards drawn again (see redrawnShards) included. */
  generated: number;
  /** Images of shards that were finished and found whole, and so not drawn again. */
  skipped: number;
  /** Finished shards of a resumed run whose files were missing or damaged, drawn again (the log says why). */
  redrawnShards: number;
  /** Temp files of atomic writes left by a killed run, removed. */
  staleTempFiles: number;
  seconds: number;
  imagesPerSecond: number;
  redraws: number;
  shards: number;
}

/**
 * Labels as a plain list: JSON writes a typed array as an object ({"0": 3, ...}), which a resume could neither
 * compare with the labels given again nor pass to the sampler. Anything else is left for the checks to name.
 */
function plainLabels(labels: unknown): unknown {
  return ArrayBuffer.isView(labels) && !(labels instanceof DataView) ? Array.from(labels as unknown as ArrayLike<number>) : labels;
}

function shardOptions(spec: GenerateSpec, count: number): Manifest['options'] {
  return {
    count, format: spec.format ?? 'png', shardSize: spec.shardSize ?? 1000, labels: plainLabels(spec.labels) as GenerateSpec['labels'],
    denoiseSigma: spec.denoiseSigma, seed: spec.seed ?? 0, guidance: spec.guidance ?? 0, guideWhat: spec.guideWhat ?? 'ab', attnTemp: spec.attnTemp ?? 1, annealed: spec.annealed ?? false,
    // Recorded only when not the default, so that a manifest written before these options existed still matches
    // a resume with the defaults; a resume must keep them (they change the images).
    ...(spec.temperature === undefined || spec.temperature === 1 ? {} : { temperature: spec.temperature }),
    ...reducedPrecision(spec),
  };
}

/**
 * The manifest options as far as they decide the images, defaults written out: a resume that spells the same run
 * differently (no denoising as sigma 0 or left out; one class as a number or as a list of it) is the same run.
 */
function imageOptions(o: Partial<Manifest['options']>) {
  const labels = plainLabels(o.labels) as number | number[] | undefined;
  const oneClass = Array.isArray(labels) && labels.length > 0 && labels.every((l) => l === labels[0]) ? labels[0] : labels;
  const precision = o.precision ?? 'fp32';
  // Without guidance its shape options change no image, and earlier versions recorded them even so: such a run
  // resumes with their defaults, which the sampler takes (it refuses them set without guidance).
  const guided = (o.guidance ?? 0) > 0;
  return {
    count: o.count, format: o.format ?? 'png', shardSize: o.shardSize ?? 1000, labels: oneClass, denoiseSigma: o.denoiseSigma || 0,
    seed: o.seed ?? 0, guidance: o.guidance ?? 0, guideWhat: guided ? o.guideWhat ?? 'ab' : 'ab', attnTemp: guided ? o.attnTemp ?? 1 : 1,
    annealed: guided ? o.annealed ?? false : false,
    temperature: o.temperature ?? 1, precision, kvCache: o.kvCache ?? precision,
  };
}

const same = (a: unknown, b: unknown) => JSON.stringify(a) === JSON.stringify(b);

/**
 * The spec of a resumed run: options left out come from the manifest, so `resume` alone continues it; one given
 * again must agree with the manifest, else the run would mix two kinds of images. Every disagreement is listed, so
 * one refusal says everything to drop.
 */
function resumedSpec(spec: GenerateSpec, manifest: Manifest, manifestPath: string): GenerateSpec {
  const saved = imageOptions(manifest.options);
  // The recorded config serves a checkpoint without one in its metadata (the SHA-256 check still ties the weights).
  const merged: GenerateSpec = { ...spec, checkpoint: spec.checkpoint ?? manifest.checkpoint, config: spec.config ?? { ...manifest.config } };
  const fill = merged as unknown as Record<string, unknown>;
  for (const [key, value] of Object.entries(saved)) fill[key] ??= value;
  const now = imageOptions(merged);
  const shown = (v: unknown) => (v === undefined ? 'no labels (classes in turn)' : describeValue(v));
  const differ = (Object.keys(saved) as Array<keyof typeof saved>).filter((key) => !same(saved[key], now[key]))
    .map((key) => `${key}: expected ${shown(saved[key])}, the value the run in ${manifestPath} was started with, got ${shown(now[key])}`);
  if (differ.length > 0) {
    throw new TarflowError('ERR_TARFLOW_INVALID_ARGUMENT', `${differ.join('; ')}; a resumed run keeps its options, so leave ` +
      `${differ.length > 1 ? 'these' : 'this one'} out (or start a new run in another out folder (--out) to change ${differ.length > 1 ? 'them' : 'it'})`);
  }
  return merged;
}

const DAMAGED = 'ERR_TARFLOW_FILE_FORMAT';
const int = (name: string, v: unknown, min: number) => checkNumber(name, v, { integer: true, min }, DAMAGED);
const array = (name: string, v: unknown): unknown[] => {
  if (!Array.isArray(v)) throw validationError(DAMAGED, name, 'an array', describeValue(v));
  return v;
};

/** The structure every later step relies on: a manifest that lacks it cannot say which shards are finished. */
function checkManifest(m: unknown): Manifest {
  const manifest = checkObject('the manifest', m, DAMAGED);
  checkOneOf('format', manifest.format, ['tarflow-generate'], DAMAGED);
  if (manifest.version !== 1) throw validationError(DAMAGED, 'version', '1', describeValue(manifest.version));
  checkString('checkpoint', manifest.checkpoint, DAMAGED);
  optional(manifest.checkpointSha256, (v) => checkString('checkpointSha256', v, DAMAGED));
  checkObject('config', manifest.config, DAMAGED);
  const count = int('count', manifest.count, 1);
  const shardSize = int('shardSize', manifest.shardSize, 1);
  const options = checkObject('options', manifest.options, DAMAGED);
  // The shards on disk were laid out by these: the options must say the same, or a resume would draw another layout.
  if (options.count !== count) throw validationError(DAMAGED, 'options.count', `${count} (count)`, describeValue(options.count));
  if (options.shardSize !== shardSize) throw validationError(DAMAGED, 'options.shardSize', `${shardSize} (shardSize)`, describeValue(options.shardSize));
  checkOneOf('options.format', options.format, ['png', 'npz'], DAMAGED);
  // Earlier versions wrote labels given as an Int32Array as an object ({"0": 3, "1": 1, ...}): read as the list it was.
  const labels = options.labels;
  if (labels !== null && typeof labels === 'object' && !Array.isArray(labels) && Object.keys(labels).every((k, i) => k === String(i))) {
    options.labels = Object.values(labels);
  }
  optional(manifest.nameDigits, (v) => checkNumber('nameDigits', v, { integer: true, min: 6, max: 16 }, DAMAGED));
  const nShards = Math.ceil(count / shardSize);
  const seen = new Set<unknown>();
  array('shards', manifest.shards).forEach((s, i) => {
    const shard = checkObject(`shards[${i}]`, s, DAMAGED);
    for (const key of ['start', 'count'] as const) int(`shards[${i}].${key}`, shard[key], 0);
    // A shard the layout does not have would be taken for finished work, and one of its images never drawn.
    const index = checkNumber(`shards[${i}].index`, shard.index, { integer: true, min: 0, below: nShards }, DAMAGED);
    // Listed twice, a shard's images would be counted twice (progress past 100%, a summary of more than count).
    if (seen.has(index)) throw validationError(DAMAGED, `shards[${i}].index`, 'a shard not listed before', `${index} again`);
    seen.add(index);
    if (shard.start !== index * shardSize) throw validationError(DAMAGED, `shards[${i}].start`, `${index * shardSize} (index x shardSize)`, describeValue(shard.start));
    const images = Math.min(shardSize, count - index * shardSize);
    if (shard.count !== images) throw validationError(DAMAGED, `shards[${i}].count`, `${images}`, describeValue(shard.count));
    array(`shards[${i}].files`, shard.files);
    array(`shards[${i}].redraws`, shard.redraws);
    if (shard.sha256 !== undefined && !(typeof shard.sha256 === 'string' && /^[0-9a-f]{64}$/.test(shard.sha256))) {
      throw validationError(DAMAGED, `shards[${i}].sha256`, 'a SHA-256 in hex', describeValue(shard.sha256));
    }
  });
  checkBoolean('complete', manifest.complete, DAMAGED);
  return manifest as unknown as Manifest;
}

/**
 * The manifest in `out`, or null when there is none. Only a missing file means no run yet: a damaged one is
 * refused, since starting over would overwrite shards it no longer describes and resuming would trust it.
 */
async function readManifest(out: string, manifestPath: string): Promise<Manifest | null> {
  const damaged = (why: string, cause?: unknown) => new TarflowError(DAMAGED, `${manifestPath} is damaged (${why}); it no longer says which ` +
    `shards in ${out} are finished, so the run can neither continue nor start over there: delete the folder, or choose another out folder (--out)`, { cause });
  let text: string;
  try {
    // Looked at first: a FIFO put where the manifest goes would make the read wait for a writer for good.
    const info = await stat(manifestPath);
    if (!info.isFile()) {
      throw new TarflowError('ERR_TARFLOW_INVALID_ARGUMENT', `${manifestPath}: not a regular file but ${describeFileKind(info)}, ` +
        `so it holds no run's manifest; delete it, or choose another out folder (--out)`);
    }
    text = await readFile(manifestPath, 'utf8');
  } catch (err) {
    if (err instanceof TarflowError) throw err;
    const code = (err as NodeJS.ErrnoException).code;
    // ENOTDIR: out is a file, which makeFolder then names.
    if (code === 'ENOENT' || code === 'ENOTDIR') return null;
    throw new TarflowError('ERR_TARFLOW_INVALID_ARGUMENT', `${manifestPath}: could not read it (${code ?? (err as Error).message}); check the path and its permissions`, { cause: err });
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw damaged(`not JSON: ${(err as Error).message}`, err);
  }
  try {
    return checkManifest(raw);
  } catch (err) {
    throw damaged((err as Error).message, err);
  }
}

function reducedPrecision(spec: GenerateSpec): Pick<GenerateSpec, 'precision' | 'kvCache'> {
  const precision = spec.precision ?? 'fp32';
  const kvCache = spec.kvCache ?? precision;
  return precision === 'fp32' && kvCache === 'fp32' ? {} : { precision, kvCache };
}

export { nameDigitsFor, pngFileName };

const npzFileName = (k: number) => `shard-${String(k).padStart(5, '0')}.npz`;

/** The files of a run's own outputs and manifest, which alone a run removes the temp files of. */
const RUN_FILE = /^(manifest\.json|shard-\d{5,}\.npz|\d{6,}(-class-?\d+)?\.png)$/;

/** Leftovers of a run killed as it started (its claim, and the manifest's temp file): no reason to refuse a new run. */
const startLeftover = (name: string) => isLockFileName(name) || atomicTempTarget(name) === 'manifest.json';

const raced = (manifestPath: string, resuming: boolean) => new TarflowError('ERR_TARFLOW_INVALID_ARGUMENT', `${manifestPath} was written by another run while this ` +
  `one started; ${resuming ? 'run the command again to resume from it' : 'continue it with resume: true (--resume) or choose another out folder (--out)'}`);

/**
 * A new run writes only into an empty or new folder. Its manifest is left to the caller's own check, and seen
 * here only when another run wrote it meanwhile (which writes it before any image): then that is what is said.
 */
async function checkNewRunFolder(out: string, manifestPath: string): Promise<void> {
  await checkFolderEmpty(out, 'out', 'choose another out folder (--out) or empty this one (resume: true (--resume) continues a run only in a folder ' +
    'that holds its manifest.json)', (name) => name === 'manifest.json' || startLeftover(name));
  if ((await readManifest(out, manifestPath)) !== null) throw raced(manifestPath, false);
}

/**
 * Removes the temp files of this run's own files that atomic writes of a killed run left in `out` (they would stay
 * beside the images for good). Only the caller's claim on the folder makes this safe: no other run writes there.
 */
async function removeStaleTemps(out: string): Promise<number> {
  let removed = 0;
  try {
    for (const name of await readdir(out)) {
      const target = atomicTempTarget(name);
      if (target === null || !RUN_FILE.test(target)) continue;
      await rm(join(out, name), { force: true });
      removed++;
    }
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? 'error';
    throw new TarflowError('ERR_TARFLOW_INVALID_ARGUMENT', `out: could not list or clean the folder ${JSON.stringify(out)} (${code}); ` +
      'give this user read and write permission on it (chmod u+rwx) or choose another folder', { cause: err });
  }
  return removed;
}

/** The file at `path` for `use`, with its size and a reader of up to `length` bytes from `position` (fewer at its end). */
async function withFile<T>(path: string, use: (size: number, read: (position: number, length: number) => Promise<Buffer>) => Promise<T>): Promise<T> {
  // Looked at before it is opened: opening a FIFO put where a shard was would wait for a writer for good.
  if (!(await stat(path)).isFile()) return use(-1, async () => Buffer.alloc(0));
  const handle = await open(path, 'r');
  try {
    const info = await handle.stat();
    if (!info.isFile()) return await use(-1, async () => Buffer.alloc(0));
    return await use(info.size, async (position, length) => {
      const buffer = Buffer.alloc(length);
      const { bytesRead } = await handle.read(buffer, 0, length, Math.max(0, position));
      return buffer.subarray(0, bytesRead);
    });
  } finally {
    await handle.close();
  }
}

const PNG_SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
/** The IEND chunk every complete PNG ends with: length 0, type, CRC. */
const PNG_END = Buffer.from([0, 0, 0, 0, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82]);

/**
 * Why a finished PNG of a resumed run cannot be kept, or null: checked as far as a few bytes at each end allow (the
 * signature, the IHDR size, the IEND chunk), which finds a cut or foreign file without decoding it.
 */
function pngProblem(path: string, side: number): Promise<string | null> {
  return withFile(path, async (size, read) => {
    if (size < 0) return 'is not a file';
    const head = await read(0, 24);
    if (head.length < 24 || !head.subarray(0, 8).equals(PNG_SIGNATURE) || head.toString('latin1', 12, 16) !== 'IHDR') return 'is not a PNG';
    const [w, h] = [head.readUInt32BE(16), head.readUInt32BE(20)];
    if (w !== side || h !== side) return `is ${w}x${h} pixels, not ${side}x${side}`;
    if (!(await read(size - PNG_END.length, PNG_END.length)).equals(PNG_END)) return 'is cut short (no IEND chunk at its end)';
    return null;
  });
}

/**
 * Why a finished .npz shard of a resumed run cannot be kept, or null: its ZIP end record and central directory (a
 * few hundred bytes at its end) must list the members this run writes, stored, with room for every image's bytes,
 * and account for the whole file. A cut file has no end record where the size says; the members' data is not read.
 */
function npzProblem(path: string, images: number, imageBytes: number, conditional: boolean): Promise<string | null> {
  return withFile(path, async (size, read) => {
    if (size < 0) return 'is not a file';
    if (size < 22 + images * imageBytes) return `is cut short (${size} bytes, fewer than its ${images} images take)`;
    const end = await read(size - 22, 22);
    if (end.readUInt32LE(0) !== 0x06054b50) return 'is cut short or not an .npz (no ZIP end record at its end)';
    const entries = end.readUInt16LE(10);
    const cdSize = end.readUInt32LE(12);
    const cdOffset = end.readUInt32LE(16);
    if (cdOffset + cdSize + 22 !== size) return 'is damaged (its ZIP end record does not match its size)';
    const wanted = new Map([['arr_0.npy', images * imageBytes], ...(conditional ? [['labels.npy', images * 4] as const] : [])]);
    if (entries !== wanted.size || cdSize > 64 * 1024) return `holds ${entries} arrays, not the ${wanted.size} this run writes`;
    const cd = await read(cdOffset, cdSize);
    for (let at = 0, k = 0; k < entries; k++) {
      if (at + 46 > cd.length || cd.readUInt32LE(at) !== 0x02014b50) return 'is damaged (its ZIP central directory does not parse)';
      const nameLength = cd.readUInt16LE(at + 28);
      const name = cd.toString('utf8', at + 46, at + 46 + nameLength);
      const stored = cd.readUInt32LE(at + 20);
      const bytes = wanted.get(name);
      if (bytes === undefined) return `holds an array ${JSON.stringify(name)} that this run does not write`;
      // An .npy member is its header (a multiple of 64 bytes, far below 64 KiB) and then the data, stored.
      const local = cd.readUInt32LE(at + 42);
      if (cd.readUInt16LE(at + 10) !== 0 || stored < bytes || stored > bytes + 65536 || local + 30 + nameLength + stored > cdOffset) {
        return `is damaged (its ${name} is not the array of its ${images} images)`;
      }
      // The .npy header's own length, read where the member starts, pins the data to exactly its images' bytes (the
      // bounds above would let a shard of other size through, as one of another run with more images per shard).
      const head = await read(local, 30);
      const member = local + 30 + (head.length === 30 ? head.readUInt16LE(26) + head.readUInt16LE(28) : 0);
      const npy = await read(member, 12);
      const npyHeader = npy.length < 12 || npy.readUInt32BE(0) !== 0x934e554d ? -1 : npy[6] === 1 ? 10 + npy.readUInt16LE(8) : 12 + npy.readUInt32LE(8);
      if (head.length < 30 || head.readUInt32LE(0) !== 0x04034b50 || npyHeader < 0 || npyHeader + bytes !== stored) {
        return `is damaged (its ${name} does not hold exactly its ${images} images)`;
      }
      wanted.delete(name);
      at += 46 + nameLength + cd.readUInt16LE(at + 30) + cd.readUInt16LE(at + 32);
    }
    return null;
  });
}

/**
 * Why a shard the manifest lists as finished cannot be kept, or null. Images depend only on (seed, index), so one
 * that fails is drawn again: the manifest would otherwise report images that are not there (deleted or cut files,
 * a hand-edited list).
 */
async function shardProblem(out: string, shard: ShardRecord, expected: string[], check: (path: string) => Promise<string | null>): Promise<string | null> {
  if (shard.files.length !== expected.length || shard.files.some((f, i) => f !== expected[i])) {
    const named = expected.length === 1 ? expected[0] : `${expected[0]} to ${expected[expected.length - 1]}`;
    return `the manifest lists ${shard.files.length === 0 ? 'no files' : 'other files'} for it (this run writes ${named})`;
  }
  for (const file of expected) {
    let problem: string | null;
    try {
      problem = await check(join(out, file));
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      problem = code === 'ENOENT' ? 'is missing' : `could not be read (${code ?? (err as Error).message})`;
    }
    if (problem !== null) return `${file} ${problem}`;
  }
  if (shard.sha256 !== undefined && (await filesSha256(expected.map((f) => join(out, f)))) !== shard.sha256) {
    return `${expected.length === 1 ? `${expected[0]} was` : 'its files were'} changed since the run wrote ${expected.length === 1 ? 'it' : 'them'} (SHA-256 differs)`;
  }
  return null;
}

const sha256Prefix = (sha: string) => `${sha.slice(0, 12)}...`;

function otherModel(manifestPath: string, checkpoint: string): TarflowError {
  return new TarflowError('ERR_TARFLOW_INVALID_ARGUMENT', `${manifestPath} was written with another model than ${checkpoint} (its config differs); ` +
    'resume from the same checkpoint, or use another out folder (--out)');
}

function otherWeights(manifestPath: string, checkpoint: string, then: string, now: string): TarflowError {
  return new TarflowError('ERR_TARFLOW_INVALID_ARGUMENT', `${manifestPath} was written from other weights than ${checkpoint} has now ` +
    `(SHA-256 ${sha256Prefix(then)} then, ${sha256Prefix(now)} now); resume from the same checkpoint file ` +
    `(copy a checkpoint that training still overwrites before generating from it) or use another out folder (--out)`);
}

/**
 * Refuses a resume from another checkpoint file before the run's recorded config is applied to it: loaded with
 * that config, another model's tensors fail on a shape, which says nothing of the real problem. Returns the file's
 * SHA-256 where it was computed.
 */
async function checkSameCheckpoint(existing: Manifest, manifestPath: string, checkpoint: string, file: string, givenConfig: GenerateSpec['config']): Promise<string | undefined> {
  if (existing.checkpointSha256 === undefined) return undefined;
  // A file that cannot be read is left to loadModel, whose messages say what is wrong with it.
  const sha = await fileSha256(file).catch(() => undefined);
  if (sha === undefined || sha === existing.checkpointSha256) return sha;
  const own = givenConfig ? fromReferenceConfig(givenConfig) : configFromMetadata(await readSafetensors(file), file);
  if (own && !same(toReferenceConfig(own), existing.config)) throw otherModel(manifestPath, checkpoint);
  throw otherWeights(manifestPath, checkpoint, existing.checkpointSha256, sha);
}

export async function runGenerate(given: GenerateSpec, ctx: TaskContext): Promise<GenerateSummary> {
  checkObject('spec', given);
  checkKnownKeys('spec', given, GENERATE_SPEC);
  checkString('out', given.out);
  optional(given.resume, (v) => checkBoolean('resume', v));
  const manifestPath = join(given.out, 'manifest.json');
  const existing = await readManifest(given.out, manifestPath);
  if (existing && !given.resume) {
    throw new TarflowError('ERR_TARFLOW_INVALID_ARGUMENT', `${given.out} already holds a generation run; continue it with resume: true (--resume) or choose another out folder (--out)`);
  }
  if (!existing && given.resume) {
    throw new TarflowError('ERR_TARFLOW_INVALID_ARGUMENT', `resume: ${manifestPath} does not exist, so there is no run to continue; start a new one without resume (--resume)`);
  }
  const resumed = existing ? resumedSpec(given, existing, manifestPath) : given;
  checkCheckpointSpec(resumed);
  // A resumed run's guidance and denoising are its manifest's; a new one from a shipped model gets the model's own.
  const spec = existing ? resumed : withSamplingDefaults(resumed);
  const { count } = resolveGenerateOptions({ ...spec, count: spec.count as number });
  optional(spec.precision, (v) => checkOneOf('precision', v, PRECISIONS));
  const format = checkOneOf('format', spec.format ?? 'png', ['png', 'npz']);
  const shardSize = checkNumber('shardSize', spec.shardSize ?? 1000, { integer: true, min: 1 });
  await checkFolderCreatable(spec.out, 'out');
  if (!existing) await checkNewRunFolder(spec.out, manifestPath);
  const checkpointFile = shippedModel(spec.checkpoint) ? pretrainedPath(spec.checkpoint) : spec.checkpoint;
  const earlySha256 = existing ? await checkSameCheckpoint(existing, manifestPath, spec.checkpoint, checkpointFile, given.config) : undefined;
  const model = await loadModel(spec.checkpoint, { device: spec.device, config: spec.config, precision: spec.precision });
  let lock: FolderLock | undefined;
  try {
    // A new run's default temperature follows the model (a resumed one's is the manifest's, where absent means 1).
    const temperature = existing ? spec.temperature : spec.temperature ?? defaultTemperature(model);
    const options = shardOptions({ ...spec, temperature }, count);
    let manifest: Manifest;
    const config = toReferenceConfig(model.config);
    const checkpointSha256 = earlySha256 ?? await fileSha256(checkpointFile);
    const bf16Kernel = options.precision === 'bf16' ? model.backend.bf16GemmKernel?.() : undefined;
    if (existing) {
      if (!same(existing.config, config)) throw otherModel(manifestPath, spec.checkpoint);
      if (existing.checkpointSha256 !== undefined && existing.checkpointSha256 !== checkpointSha256) {
        throw otherWeights(manifestPath, spec.checkpoint, existing.checkpointSha256, checkpointSha256);
      }
      if (existing.device !== undefined && existing.device !== model.backend.device) {
        ctx.log(`${manifestPath}: its shards so far were drawn on the ${existing.device}, the rest will be on the ${model.backend.device}; ` +
          'the two agree to float32 rounding, not bit for bit (pass --device to keep one)');
      } else if (existing.bf16Kernel !== undefined && bf16Kernel !== undefined && existing.bf16Kernel !== bf16Kernel) {
        const variable = model.backend.device === 'cuda' ? 'TARFLOW_CUDA_GEMM' : 'TARFLOW_CPU_GEMM';
        ctx.log(`${manifestPath}: its shards so far took their bf16 products from the ${existing.bf16Kernel} kernel, the rest will take them from ` +
          `the ${bf16Kernel} one; the two agree to bf16 rounding, not bit for bit (${variable}=${existing.bf16Kernel} keeps the first)`);
      }
      manifest = existing;
    } else {
      // The checkpoint path is recorded absolute, so that a resume from another folder that leaves it out finds it.
      manifest = {
        format: 'tarflow-generate', version: 1, checkpoint: shippedModel(spec.checkpoint) ? spec.checkpoint : resolve(spec.checkpoint),
        checkpointSha256, device: model.backend.device, ...(bf16Kernel === undefined ? {} : { bf16Kernel }),
        config, ...(format === 'png' ? { nameDigits: nameDigitsFor(count) } : {}), options, count, shardSize, shards: [], complete: false,
      };
    }
    // Validate labels up front (a bad list fails before any work); they also name the PNG files.
    const allLabels = resolveLabels(model, count, spec.labels);
    try {
      checkDenoisable(model, 'denoiseSigma', spec.denoiseSigma); // before the folder and its manifest, as the labels
    } catch (err) {
      // A run begun before denoising was refused for such models: its manifest's sigma cannot be left out on resume.
      if (!existing) throw err;
      throw new TarflowError('ERR_TARFLOW_INVALID_ARGUMENT', `${(err as Error).message}. This run's manifest (${manifestPath}) records ` +
        `denoiseSigma ${spec.denoiseSigma}, which a resume must keep, so it cannot be resumed: start it again in a new --out folder without --denoise`);
    }
    // Made only now that the checkpoint, options and labels have been checked: a refused run leaves no folder.
    await makeFolder(spec.out, 'out');
    lock = await lockFolder(spec.out, 'out');
    // The manifest was read before the claim: another run may have written it since.
    if (JSON.stringify(await readManifest(spec.out, manifestPath)) !== JSON.stringify(existing)) throw raced(manifestPath, existing !== null);
    // Likewise the folder's other files (the check before the claim only spared a refused run the model's loading).
    if (!existing) await checkNewRunFolder(spec.out, manifestPath);
    const staleTempFiles = await removeStaleTemps(spec.out);
    if (staleTempFiles > 0) ctx.log(`${spec.out}: removed ${staleTempFiles} temp file${staleTempFiles > 1 ? 's' : ''} that a killed run's writes left behind`);
    const { inChannels: C, imgSize: S } = model.config;
    const per = C * S * S;
    const digits = manifest.nameDigits ?? 6;
    const pngName = (index: number) => pngFileName(index, digits, allLabels?.[index]);
    const shardFiles = (k: number) => format === 'npz' ? [npzFileName(k)]
      : Array.from({ length: Math.min(shardSize, count - k * shardSize) }, (_, i) => pngName(k * shardSize + i));
    const fileProblem = (images: number) => (path: string) => format === 'npz' ? npzProblem(path, images, per, allLabels !== null) : pngProblem(path, S);
    const damaged: string[] = [];
    const kept: ShardRecord[] = [];
    for (const shard of manifest.shards) {
      const problem = await shardProblem(spec.out, shard, shardFiles(shard.index), fileProblem(shard.count));
      if (problem === null) kept.push(shard);
      else damaged.push(`shard ${shard.index}: ${problem}`);
    }
    if (damaged.length > 0) {
      ctx.log(`${manifestPath}: ${damaged.length} of ${manifest.shards.length} finished shards are drawn again (images depend only on the seed and ` +
        `their index: the same bits on the same device and version): ${damaged.slice(0, 5).join('; ')}${damaged.length > 5 ? `; and ${damaged.length - 5} more` : ''}`);
      manifest.shards = kept;
      manifest.complete = false;
    }
    // Written before anything is drawn: a run stopped or failed in its first shard can then be resumed, and one whose
    // damaged shards are being drawn again no longer lists them.
    if (!existing || damaged.length > 0) await writeFileAtomic(manifestPath, JSON.stringify(manifest, null, 1));
    const done = new Set(manifest.shards.map((s) => s.index));
    const nShards = Math.ceil(count / shardSize);
    const skipped = manifest.shards.reduce((a, s) => a + s.count, 0);
    const start = performance.now();
    const meter = new RateMeter(skipped);
    let generated = 0;
    const stopped = () => new TarflowError('ERR_TARFLOW_ABORTED',
      `generation was stopped; ${manifest.shards.length} of ${nShards} shards are written and resume: true (--resume) continues`);
    // A stop request ends the shard being drawn at its next batch (that shard is drawn again on resume), so Ctrl-C
    // answers within a batch rather than after up to a whole shard of images.
    const signal = abortSignalOf(ctx);
    for (let k = 0; k < nShards; k++) {
      if (done.has(k)) continue;
      if (ctx.aborted()) throw stopped();
      const s0 = k * shardSize;
      const n = Math.min(shardSize, count - s0);
      const labels = spec.labels === undefined ? undefined : typeof spec.labels === 'number' ? spec.labels : spec.labels.slice(s0, s0 + n);
      let result: ReturnType<typeof generate>;
      try {
        result = generate(model, {
          ...pickKeys(spec, GENERATE_OPTIONS), temperature, count: n, startIndex: s0, labels, batchSize: spec.batchSize, signal,
          onProgress: (d) => {
            const done = skipped + generated + d;
            ctx.progress({ task: 'generate', done, total: count, ...meter.update(done, count) });
          },
        });
      } catch (err) {
        if (signal.aborted && (err as TarflowError).code === 'ERR_TARFLOW_ABORTED') throw stopped();
        throw err;
      }
      const files = shardFiles(k);
      if (format === 'npz') {
        // (N, C, H, W) -> (N, H, W, C)
        const hwc = new Uint8Array(n * per);
        for (let i = 0; i < n; i++)
          for (let c = 0; c < C; c++)
            for (let p = 0; p < S * S; p++) hwc[i * per + p * C + c] = result.images[i * per + c * S * S + p];
        const arrays: Record<string, { data: Uint8Array | Int32Array; shape: number[] }> = { arr_0: { data: hwc, shape: [n, S, S, C] } };
        if (result.labels) arrays.labels = { data: result.labels, shape: [n] };
        await writeNpz(join(spec.out, files[0]), arrays);
      } else {
        for (let i = 0; i < n; i++) {
          const img = imageGrid(result.images.subarray(i * per, (i + 1) * per), 1, C, S, S, { cols: 1, pad: 0 });
          await writePng(join(spec.out, files[i]), img.pixels, img.width, img.height, C === 1 ? 1 : 3);
        }
      }
      // Read back for the hash: the writers return no bytes, and the files are in the page cache.
      const sha256 = await filesSha256(files.map((f) => join(spec.out, f)));
      manifest.shards.push({ index: k, start: s0, count: n, files, redraws: result.redraws, sha256 });
      manifest.shards.sort((a, b) => a.index - b.index);
      generated += n;
      await writeFileAtomic(manifestPath, JSON.stringify(manifest, null, 1));
    }
    manifest.complete = true;
    await writeFileAtomic(manifestPath, JSON.stringify(manifest, null, 1));
    const seconds = (performance.now() - start) / 1000;
    return {
      out: spec.out, images: count, generated, skipped, seconds, imagesPerSecond: seconds > 0 ? generated / seconds : 0,
      redraws: manifest.shards.reduce((a, s) => a + s.redraws.length, 0), shards: nShards, redrawnShards: damaged.length, staleTempFiles,
    };
  } finally {
    model.dispose();
    await lock?.release();
  }
}
