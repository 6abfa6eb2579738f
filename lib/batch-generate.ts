/**
 * Batch offline generation: thousands of samples written to disk in shards (PNG files or .npz archives of
 * uint8 (N, H, W, C) under `arr_0`, the layout FID tools read), with a manifest that makes the run resumable.
 * Image k depends only on (seed, k) and its label, so shards are the same whatever the batch size, and a resumed
 * run skips the shards the manifest lists as finished.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { readdir, readFile, rm } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import {
  atomicTempTarget, checkFolderCreatable, checkFolderEmpty, isLockFileName, lockFolder, makeFolder, writeFileAtomic, type FolderLock,
} from './atomic.js';
import { configFromMetadata, loadModel } from './checkpoint.js';
import { fromReferenceConfig, toReferenceConfig } from './config.js';
import type { DeviceOption, Precision } from './backend.js';
import { TarflowError } from './errors.js';
import { writeNpz } from './npz.js';
import { imageGrid, writePng } from './png.js';
import { GENERATE_OPTIONS, defaultTemperature, generate, resolveGenerateOptions, resolveLabels, type ReverseOptions } from './sampling.js';
import { REVERSE_OPTIONS } from './model.js';
import { pretrainedPath, shippedModel } from './pretrained.js';
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
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

export interface ShardRecord {
  index: number;
  start: number;
  count: number;
  files: string[];
  /** Samples that came out NaN/Inf and were redrawn: their index and the noise stream attempt used. */
  redraws: Array<{ index: number; attempt: number }>;
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
   * With bf16 products, the kernel that ran them ('amx' or 'reference' on the CPU, 'wgmma' or 'mma' on the GPU;
   * TARFLOW_CPU_GEMM / TARFLOW_CUDA_GEMM): another one rounds differently, which a resume is told.
   */
  bf16Kernel?: string;
  config: ReturnType<typeof toReferenceConfig>;
  options: Omit<GenerateSpec, 'resume' | 'device' | 'batchSize' | 'checkpoint' | 'config' | 'out' | 'count'> & { count: number };
  count: number;
  shardSize: number;
  shards: ShardRecord[];
  complete: boolean;
}

export interface GenerateSummary {
  out: string;
  images: number;
  generated: number;
  skipped: number;
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
    count, format: spec.format ?? 'png', shardSize: spec.shardSize ?? 1000, labels: plainLabels(spec.labels) as GenerateSpec['labels'], denoiseSigma: spec.denoiseSigma,
    seed: spec.seed ?? 0, guidance: spec.guidance ?? 0, guideWhat: spec.guideWhat ?? 'ab', attnTemp: spec.attnTemp ?? 1, annealed: spec.annealed ?? false,
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
  return {
    count: o.count, format: o.format ?? 'png', shardSize: o.shardSize ?? 1000, labels: oneClass, denoiseSigma: o.denoiseSigma || 0,
    seed: o.seed ?? 0, guidance: o.guidance ?? 0, guideWhat: o.guideWhat ?? 'ab', attnTemp: o.attnTemp ?? 1, annealed: o.annealed ?? false,
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
  const nShards = Math.ceil(count / shardSize);
  array('shards', manifest.shards).forEach((s, i) => {
    const shard = checkObject(`shards[${i}]`, s, DAMAGED);
    for (const key of ['start', 'count'] as const) int(`shards[${i}].${key}`, shard[key], 0);
    // A shard the layout does not have would be taken for finished work, and one of its images never drawn.
    const index = checkNumber(`shards[${i}].index`, shard.index, { integer: true, min: 0, below: nShards }, DAMAGED);
    if (shard.start !== index * shardSize) throw validationError(DAMAGED, `shards[${i}].start`, `${index * shardSize} (index x shardSize)`, describeValue(shard.start));
    const images = Math.min(shardSize, count - index * shardSize);
    if (shard.count !== images) throw validationError(DAMAGED, `shards[${i}].count`, `${images}`, describeValue(shard.count));
    array(`shards[${i}].files`, shard.files);
    array(`shards[${i}].redraws`, shard.redraws);
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
    text = await readFile(manifestPath, 'utf8');
  } catch (err) {
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

/** The files of a run's own outputs and manifest, which alone a run removes the temp files of. */
const RUN_FILE = /^(manifest\.json|shard-\d{5,}\.npz|\d{6,}(-class\d+)?\.png)$/;

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
  for (const name of await readdir(out)) {
    const target = atomicTempTarget(name);
    if (target === null || !RUN_FILE.test(target)) continue;
    await rm(join(out, name), { force: true });
    removed++;
  }
  return removed;
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
  const spec = existing ? resumedSpec(given, existing, manifestPath) : given;
  checkCheckpointSpec(spec);
  const { count } = resolveGenerateOptions({ ...spec, count: spec.count as number });
  optional(spec.precision, (v) => checkOneOf('precision', v, ['fp32', 'bf16']));
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
        config, options, count, shardSize, shards: [], complete: false,
      };
    }
    // Validate labels up front (a bad list fails before any work).
    resolveLabels(model, count, spec.labels);
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
    // Written before anything is drawn: a run stopped or failed in its first shard can then be resumed.
    if (!existing) await writeFileAtomic(manifestPath, JSON.stringify(manifest, null, 1));
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
            ctx.progress({ task: 'sample', done, total: count, ...meter.update(done, count) });
          },
        });
      } catch (err) {
        if (signal.aborted && (err as TarflowError).code === 'ERR_TARFLOW_ABORTED') throw stopped();
        throw err;
      }
      const files: string[] = [];
      if (format === 'npz') {
        // (N, C, H, W) -> (N, H, W, C)
        const hwc = new Uint8Array(n * per);
        for (let i = 0; i < n; i++)
          for (let c = 0; c < C; c++)
            for (let p = 0; p < S * S; p++) hwc[i * per + p * C + c] = result.images[i * per + c * S * S + p];
        const file = `shard-${String(k).padStart(5, '0')}.npz`;
        const arrays: Record<string, { data: Uint8Array | Int32Array; shape: number[] }> = { arr_0: { data: hwc, shape: [n, S, S, C] } };
        if (result.labels) arrays.labels = { data: result.labels, shape: [n] };
        await writeNpz(join(spec.out, file), arrays);
        files.push(file);
      } else {
        for (let i = 0; i < n; i++) {
          const img = imageGrid(result.images.subarray(i * per, (i + 1) * per), 1, C, S, S, { cols: 1, pad: 0 });
          const file = `${String(s0 + i).padStart(6, '0')}${result.labels ? `-class${result.labels[i]}` : ''}.png`;
          await writePng(join(spec.out, file), img.pixels, img.width, img.height, C === 1 ? 1 : 3);
          files.push(file);
        }
      }
      manifest.shards.push({ index: k, start: s0, count: n, files, redraws: result.redraws });
      manifest.shards.sort((a, b) => a.index - b.index);
      generated += n;
      await writeFileAtomic(manifestPath, JSON.stringify(manifest, null, 1));
    }
    manifest.complete = true;
    await writeFileAtomic(manifestPath, JSON.stringify(manifest, null, 1));
    const seconds = (performance.now() - start) / 1000;
    return {
      out: spec.out, images: count, generated, skipped, seconds, imagesPerSecond: seconds > 0 ? generated / seconds : 0,
      redraws: manifest.shards.reduce((a, s) => a + s.redraws.length, 0), shards: nShards, staleTempFiles,
    };
  } finally {
    model.dispose();
    await lock?.release();
  }
}
