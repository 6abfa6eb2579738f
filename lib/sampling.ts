/**
 * Generating images: latent noise from a seed, the exact sequential inverse with guidance, the optional score
 * step that denoises, and detection of non-finite samples.
 */
import { TarflowError } from './errors.js';
import type { GuidanceOptions, TarFlow } from './model.js';

export interface DenoiseOptions {
  /** The noise level the model was trained with. */
  sigma: number;
  /** Step size multiplier lambda (default 1). */
  lambda?: number;
}

/**
 * One score step: x <- x - lambda * (B*C*S*S*sigma^2) * dL/dx, with L the (mean-reduced) training loss of the
 * batch and the labels, no guidance. Returns the new images (B*C*S*S floats).
 */
export function denoise(model: TarFlow, images: Float32Array, labels: Int32Array | null, options: DenoiseOptions): Float32Array {
  const { inChannels: C, imgSize: S } = model.config;
  const per = C * S * S;
  if (images.length === 0 || images.length % per) {
    throw new TarflowError('ERR_TARFLOW_SHAPE', `images must hold B x ${C} x ${S} x ${S} values, got ${images.length}`);
  }
  if (!(options.sigma >= 0)) throw new TarflowError('ERR_TARFLOW_INVALID_ARGUMENT', `sigma must be >= 0, got ${options.sigma}`);
  const B = images.length / per;
  const ws = model.workspace(B);
  model.setInputs(ws, images, labels);
  model.forward(ws);
  model.backward(ws, null);
  const grad = ws.dx.toArray();
  const step = (options.lambda ?? 1) * B * per * options.sigma * options.sigma;
  const out = new Float32Array(images.length);
  for (let i = 0; i < out.length; i++) out[i] = images[i] - step * grad[i];
  return out;
}

export type { GuidanceOptions };

const STREAM_LATENT = 31;

export interface GenerateOptions extends GuidanceOptions {
  /** Number of images. */
  count: number;
  /** Class labels: one per image, or a single class for all; default: class k % numClasses for image k. */
  labels?: Int32Array | number[] | number;
  /** Denoise with one score step at this noise level (the training sigma), or not at all. */
  denoiseSigma?: number;
  /** Seed of the latent noise (default 0). Image k depends only on (seed, k). */
  seed?: number;
  /** Index of the first image (to continue a run). */
  startIndex?: number;
  batchSize?: number;
  /** Redraws of a non-finite sample before giving up (default 3). */
  maxRedraws?: number;
  onProgress?: (done: number, total: number) => void;
  signal?: AbortSignal;
}

export interface GenerateResult {
  /** count * C * S * S bytes, channel-first. */
  images: Uint8Array;
  labels: Int32Array | null;
  /** Samples that came out NaN/Inf and were redrawn from another noise stream. */
  redraws: Array<{ index: number; attempt: number }>;
}

/** Resolves the labels option into one label per image (null for an unconditional model). */
export function resolveLabels(model: TarFlow, count: number, labels: GenerateOptions['labels'], startIndex = 0): Int32Array | null {
  const n = model.config.numClasses;
  if (n === 0) {
    if (labels !== undefined && !(typeof labels === 'number' && labels < 0)) {
      throw new TarflowError('ERR_TARFLOW_INVALID_ARGUMENT', 'the model is unconditional; do not pass labels');
    }
    return null;
  }
  const out = new Int32Array(count);
  if (labels === undefined) for (let i = 0; i < count; i++) out[i] = (startIndex + i) % n;
  else if (typeof labels === 'number') out.fill(labels);
  else {
    if (labels.length !== count) throw new TarflowError('ERR_TARFLOW_INVALID_ARGUMENT', `got ${labels.length} labels for ${count} images`);
    out.set(labels);
  }
  for (let i = 0; i < count; i++) {
    if (!Number.isInteger(out[i]) || out[i] < -1 || out[i] >= n) {
      throw new TarflowError('ERR_TARFLOW_INVALID_ARGUMENT', `label ${out[i]} is out of range: the model has ${n} classes (0..${n - 1}, or -1 for unconditional)`);
    }
  }
  return out;
}

function floatsToBytes(x: ArrayLike<number>, out: Uint8Array, offset: number): void {
  for (let i = 0; i < x.length; i++) {
    const v = Math.round((x[i] + 1) * 127.5);
    out[offset + i] = v < 0 ? 0 : v > 255 ? 255 : v;
  }
}

function finite(x: ArrayLike<number>, start: number, n: number): boolean {
  for (let i = start; i < start + n; i++) if (!Number.isFinite(x[i])) return false;
  return true;
}

/**
 * Samples images: latent noise from (seed, image index), the exact inverse with guidance, an optional denoising
 * step. A sample that comes out NaN/Inf is redrawn from the next noise stream (recorded), never returned silently.
 */
export function generate(model: TarFlow, options: GenerateOptions): GenerateResult {
  const count = options.count;
  if (!Number.isInteger(count) || count < 1) throw new TarflowError('ERR_TARFLOW_INVALID_ARGUMENT', `count must be a positive integer, got ${count}`);
  const seed = options.seed ?? 0;
  const start = options.startIndex ?? 0;
  const batch = Math.min(options.batchSize ?? 256, count);
  const maxRedraws = options.maxRedraws ?? 3;
  const labels = resolveLabels(model, count, options.labels, start);
  const { inChannels: C, imgSize: S } = model.config;
  const { tokens: T, patchDim: D } = model.shape;
  const per = C * S * S;
  const images = new Uint8Array(count * per);
  const redraws: GenerateResult['redraws'] = [];
  const Tensor = model.backend.Tensor;

  // Samples `indices` (global image indices, local positions) from stream attempt; returns float images.
  const draw = (globalIdx: number[], localIdx: number[], attempt: number): Float32Array => {
    const B = globalIdx.length;
    const z = new Tensor(model.dtype, [B, T, D]);
    const out = new Tensor(model.dtype, [B, C, S, S]);
    const lab = labels ? new Tensor('int32', [B], Int32Array.from(localIdx, (i) => labels[i])) : null;
    try {
      // Image k's latent is elements [k*T*D, (k+1)*T*D) of the stream: independent of batching.
      const contiguous = globalIdx.every((g, i) => g === globalIdx[0] + i);
      if (contiguous) model.ops.normal(z, seed, STREAM_LATENT + attempt, globalIdx[0] * T * D);
      else {
        globalIdx.forEach((g, i) => {
          const row = z.view(i * T * D, [T * D]);
          model.ops.normal(row, seed, STREAM_LATENT + attempt, g * T * D);
          row.dispose();
        });
      }
      model.reverse(z, out, lab, options);
      let x = Float32Array.from(out.toArray());
      if (options.denoiseSigma !== undefined && options.denoiseSigma > 0) {
        // A non-finite sample will be redrawn; it must not stop the denoising of the others, whose score step
        // does not depend on it (the loss is a per-sample sum). It goes through as zeros and comes back NaN.
        const broken: number[] = [];
        for (let i = 0; i < B; i++) {
          if (!finite(x, i * per, per)) {
            broken.push(i);
            x.fill(0, i * per, (i + 1) * per);
          }
        }
        x = denoise(model, x, lab ? (lab.toArray() as Int32Array) : null, { sigma: options.denoiseSigma });
        for (const i of broken) x.fill(NaN, i * per, (i + 1) * per);
      }
      return x;
    } finally {
      z.dispose();
      out.dispose();
      lab?.dispose();
    }
  };

  for (let s = 0; s < count; s += batch) {
    if (options.signal?.aborted) throw new TarflowError('ERR_TARFLOW_ABORTED', 'sampling was aborted');
    const B = Math.min(batch, count - s);
    const local = Array.from({ length: B }, (_, i) => s + i);
    const x = draw(local.map((i) => start + i), local, 0);
    for (let i = 0; i < B; i++) {
      let img = x.subarray(i * per, (i + 1) * per);
      let attempt = 0;
      while (!finite(img, 0, per)) {
        attempt++;
        if (attempt > maxRedraws) {
          throw new TarflowError('ERR_TARFLOW_NON_FINITE', `sample ${start + s + i} was NaN/Inf in ${maxRedraws + 1} draws; lower the guidance weight`);
        }
        redraws.push({ index: start + s + i, attempt });
        img = draw([start + s + i], [s + i], attempt);
      }
      floatsToBytes(img, images, (s + i) * per);
    }
    options.onProgress?.(s + B, count);
  }
  return { images, labels, redraws };
}
