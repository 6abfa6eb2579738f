/**
 * Batch offline generation: thousands of samples written to disk in shards (PNG files or .npz archives of
 * uint8 (N, H, W, C) under `arr_0`, the layout FID tools read), with a manifest that makes the run resumable.
 * Image k depends only on (seed, k) and its label, so shards are the same whatever the batch size, and a resumed
 * run skips the shards the manifest lists as finished.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { makeFolder, writeFileAtomic } from './atomic.js';
import { loadModel } from './checkpoint.js';
import { toReferenceConfig } from './config.js';
import type { DeviceOption, Precision } from './backend.js';
import { TarflowError } from './errors.js';
import { writeNpz } from './npz.js';
import { imageGrid, writePng } from './png.js';
import { generate, resolveGenerateOptions, resolveLabels, type ReverseOptions } from './sampling.js';
import { pretrainedPath, shippedModel } from './pretrained.js';
import { RateMeter, checkCheckpointSpec, type TaskContext } from './tasks.js';
import { checkBoolean, checkNumber, checkOneOf, checkString, optional } from './validate.js';

export interface GenerateSpec extends ReverseOptions {
  /** A .safetensors file, or the name of a shipped model ('mnist-cond', 'mnist-bpd'; see loadModel). */
  checkpoint: string;
  config?: Record<string, unknown>;
  /** Number of images. */
  count: number;
  /** Output folder: shards plus manifest.json. */
  out: string;
  /** 'png' (one file per image) or 'npz' (one archive per shard). */
  format?: 'png' | 'npz';
  /** Images per shard (default 1000). */
  shardSize?: number;
  batchSize?: number;
  /** One class for every image, a list (one per image), or undefined: classes in turn (uniform over classes). */
  labels?: number | number[];
  denoiseSigma?: number;
  seed?: number;
  /** Scale of the latent noise (default 1; see GenerateOptions.temperature). */
  temperature?: number;
  device?: DeviceOption;
  /** Matrix products of the sampler (see ModelOptions.precision); the KV cache follows unless kvCache is given. */
  precision?: Precision;
  /** Continue the run described by out/manifest.json. */
  resume?: boolean;
  /**
   * Redraws of a sample that comes out NaN/Inf before the run fails (default 3). Not recorded in the manifest: every
   * written sample succeeded within the old limit, and draws the same image under a higher one, so a failed run
   * can resume with more.
   */
  maxRedraws?: number;
}

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
  options: Omit<GenerateSpec, 'resume' | 'device' | 'batchSize' | 'checkpoint' | 'config' | 'out'>;
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
  seconds: number;
  imagesPerSecond: number;
  redraws: number;
  shards: number;
}

function shardOptions(spec: GenerateSpec, count: number): Manifest['options'] {
  return {
    count, format: spec.format ?? 'png', shardSize: spec.shardSize ?? 1000, labels: spec.labels, denoiseSigma: spec.denoiseSigma,
    seed: spec.seed ?? 0, guidance: spec.guidance ?? 0, guideWhat: spec.guideWhat ?? 'ab', attnTemp: spec.attnTemp ?? 1, annealed: spec.annealed ?? false,
    // Recorded only when not the default, so that a manifest written before these options existed still matches
    // a resume with the defaults; a resume must keep them (they change the images).
    ...(spec.temperature === undefined || spec.temperature === 1 ? {} : { temperature: spec.temperature }),
    ...reducedPrecision(spec),
  };
}

/**
 * The manifest options as far as they decide the images: a resume that spells the same run differently (no
 * denoising as sigma 0 or left out; one class as a number or as a list of it) is the same run.
 */
function sameImagesKey(options: Manifest['options']): string {
  const labels = options.labels;
  const oneClass = Array.isArray(labels) && labels.length > 0 && labels.every((l) => l === labels[0]) ? labels[0] : labels;
  return JSON.stringify({ ...options, labels: oneClass, denoiseSigma: options.denoiseSigma ? options.denoiseSigma : undefined });
}

function reducedPrecision(spec: GenerateSpec): Pick<GenerateSpec, 'precision' | 'kvCache'> {
  const precision = spec.precision ?? 'fp32';
  const kvCache = spec.kvCache ?? precision;
  return precision === 'fp32' && kvCache === 'fp32' ? {} : { precision, kvCache };
}

export async function runGenerate(spec: GenerateSpec, ctx: TaskContext): Promise<GenerateSummary> {
  checkCheckpointSpec(spec);
  checkString('out', spec.out);
  const { count } = resolveGenerateOptions(spec);
  optional(spec.precision, (v) => checkOneOf('precision', v, ['fp32', 'bf16']));
  const format = checkOneOf('format', spec.format ?? 'png', ['png', 'npz']);
  const shardSize = checkNumber('shardSize', spec.shardSize ?? 1000, { integer: true, min: 1 });
  optional(spec.resume, (v) => checkBoolean('resume', v));
  await makeFolder(spec.out, 'out');
  const manifestPath = join(spec.out, 'manifest.json');
  const model = await loadModel(spec.checkpoint, { device: spec.device, config: spec.config, precision: spec.precision });
  try {
    const options = shardOptions(spec, count);
    let manifest: Manifest;
    let existing: Manifest | null = null;
    try {
      existing = JSON.parse(await readFile(manifestPath, 'utf8')) as Manifest;
    } catch {
      existing = null;
    }
    const config = toReferenceConfig(model.config);
    const checkpointSha256 = await fileSha256(shippedModel(spec.checkpoint) ? pretrainedPath(spec.checkpoint) : spec.checkpoint);
    const bf16Kernel = options.precision === 'bf16' ? model.backend.bf16GemmKernel?.() : undefined;
    if (existing) {
      if (!spec.resume) {
        throw new TarflowError('ERR_TARFLOW_INVALID_ARGUMENT', `${spec.out} already holds a generation run; continue it with resume: true (--resume) or choose another out folder (--out)`);
      }
      if (existing.format !== 'tarflow-generate' || sameImagesKey(existing.options) !== sameImagesKey(options) ||
          JSON.stringify(existing.config) !== JSON.stringify(config)) {
        throw new TarflowError('ERR_TARFLOW_INVALID_ARGUMENT', `${manifestPath} was written with other options or another model; resume with the same options or use another out folder (--out)`);
      }
      if (existing.checkpointSha256 !== undefined && existing.checkpointSha256 !== checkpointSha256) {
        throw new TarflowError('ERR_TARFLOW_INVALID_ARGUMENT', `${manifestPath} was written from other weights than ${spec.checkpoint} has now ` +
          `(SHA-256 ${existing.checkpointSha256.slice(0, 12)}... then, ${checkpointSha256.slice(0, 12)}... now); resume from the same checkpoint file ` +
          `(copy a checkpoint that training still overwrites before generating from it) or use another out folder (--out)`);
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
      manifest = {
        format: 'tarflow-generate', version: 1, checkpoint: spec.checkpoint, checkpointSha256, device: model.backend.device,
        ...(bf16Kernel === undefined ? {} : { bf16Kernel }), config, options, count, shardSize, shards: [], complete: false,
      };
    }
    // Validate labels up front (a bad list fails before any work).
    resolveLabels(model, count, spec.labels);
    const { inChannels: C, imgSize: S } = model.config;
    const per = C * S * S;
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
    const controller = new AbortController();
    for (let k = 0; k < nShards; k++) {
      if (done.has(k)) continue;
      if (ctx.aborted()) throw stopped();
      const s0 = k * shardSize;
      const n = Math.min(shardSize, count - s0);
      const labels = spec.labels === undefined ? undefined : typeof spec.labels === 'number' ? spec.labels : spec.labels.slice(s0, s0 + n);
      let result: ReturnType<typeof generate>;
      try {
        result = generate(model, {
          ...spec, count: n, startIndex: s0, labels, batchSize: spec.batchSize, signal: controller.signal,
          onProgress: (d) => {
            if (ctx.aborted()) controller.abort();
            const done = skipped + generated + d;
            ctx.progress({ task: 'sample', done, total: count, ...meter.update(done, count) });
          },
        });
      } catch (err) {
        if (controller.signal.aborted && (err as TarflowError).code === 'ERR_TARFLOW_ABORTED') throw stopped();
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
      redraws: manifest.shards.reduce((a, s) => a + s.redraws.length, 0), shards: nShards,
    };
  } finally {
    model.dispose();
  }
}
