/**
 * Generating images: latent noise from a seed, the exact sequential inverse with guidance, the optional score
 * step that denoises, and detection of non-finite samples.
 */
import { constants as bufferConstants } from 'node:buffer';
import { PRECISIONS, type Precision, type Tensor as TensorHandle } from './backend.js';
import { TarflowError } from './errors.js';
import { resolveGuidance, type GuidanceOptions } from './guidance.js';
import { REVERSE_OPTIONS, SEED_RULE, checkModel, type ReverseOptions, type TarFlow, type TrainingNoise } from './model.js';
import { modelToPixels } from './pixels.js';
import { MAX_REDRAWS, STREAMS } from './streams.js';
import { checkArray, checkBatch, checkCallback, checkKnownKeys, checkLabels, checkLength, checkNumber, checkObject, checkOneOf, checkSignal, describeValue, optional, validationError, optionNames, type OptionNames } from './validate.js';

export interface DenoiseOptions {
  /** The noise level the model was trained with. */
  sigma: number;
  /** Step size multiplier lambda (default 1). */
  lambda?: number;
}

/**
 * One score step: x <- x - lambda * (C*S*S*sigma^2) * dL/dx, with L the sum of the images' training losses (each
 * a mean over its C*S*S values) under their labels, no guidance. Returns the new images (B*C*S*S floats).
 */
export function denoise(model: TarFlow, images: Float32Array, labels: Int32Array | null, options: DenoiseOptions): Float32Array {
  checkModel(model);
  const { inChannels: C, imgSize: S } = model.config;
  const per = C * S * S;
  checkArray('images', images, [Float32Array]);
  const B = checkBatch('images', images, per, `${C} x ${S} x ${S} images`);
  model.checkLabels(labels, B);
  checkObject('options', options);
  checkKnownKeys('options', options, { sigma: true, lambda: true } satisfies OptionNames<DenoiseOptions>);
  const sigma = checkNumber('sigma', options.sigma, { min: 0 });
  checkDenoisable(model, 'sigma', sigma);
  const lambda = checkNumber('lambda', options.lambda ?? 1);
  const ws = model.workspace(B);
  model.setInputs(ws, images, labels);
  model.forward(ws);
  // Each image's own loss, not the batch mean: an image denoises to the same bits in any batch (so a generate run
  // resumed with another --batch-size writes the same files).
  model.backward(ws, null, true);
  const grad = ws.dx.toArray();
  const step = lambda * per * sigma * sigma;
  const out = new Float32Array(images.length);
  for (let i = 0; i < out.length; i++) out[i] = images[i] - step * grad[i];
  return out;
}

/**
 * Refuses a score step for a model trained with uniform dequantization. The step is Tweedie's estimate of the clean
 * image only when the model's density is that of data plus Gaussian noise of level sigma: such a model's samples carry
 * that noise, and the step removes it. A likelihood model learnt the data spread uniformly over each pixel's bin, so
 * there is no Gaussian noise in its samples, no sigma for which the step estimates anything, and a sigma given
 * anyway would move every sample along a density gradient that is flat inside a bin and steep at its edges (its
 * samples already map back to pixels by the bin they fall in). Sigma 0 is no step, and always allowed.
 */
export function checkDenoisable(model: TarFlow, name: string, sigma: number | undefined): void {
  if (sigma === undefined || sigma === 0 || model.trainingNoise !== 'uniform') return;
  throw new TarflowError('ERR_TARFLOW_INVALID_ARGUMENT', `${name}: the model was trained with uniform dequantization (its checkpoint records ` +
    `noise 'uniform'), not with Gaussian noise, so its samples hold no noise of level ${sigma} for the denoising step to remove (the step ` +
    'estimates the clean image only for a model of Gaussian-noised data); sample this model without denoising (leave out --denoise and ' +
    "denoiseSigma), or denoise the samples of a model trained with Gaussian noise (train --noise gaussian --sigma S) at its sigma");
}

export type { GuidanceOptions, ReverseOptions };


/**
 * The temperature likelihood models (uniform dequantization) sample at by default: the shipped mnist-bpd and the
 * grids of a `--noise uniform` training run. At 1 their inverse often overflows float32 and the digits are broken.
 */
export const LIKELIHOOD_TEMPERATURE = 0.7;

/**
 * The temperature the tasks (sample, generate, eval-samples) use when none is given: LIKELIHOOD_TEMPERATURE for a
 * model trained with uniform dequantization (its checkpoint says so), 1 otherwise.
 */
export function defaultTemperature(model: TarFlow): number {
  checkModel(model);
  return model.trainingNoise === 'uniform' ? LIKELIHOOD_TEMPERATURE : 1;
}

export interface GenerateOptions extends ReverseOptions {
  /** Number of images. */
  count: number;
  /** Class labels: one per image, or a single class for all; default: class k % numClasses for image k. */
  labels?: Int32Array | number[] | number;
  /** Denoise with one score step at this noise level (the training sigma), or not at all. */
  denoiseSigma?: number;
  /** Seed of the latent noise (default 0). Image k depends only on (seed, k). */
  seed?: number;
  /**
   * Scale of the latent noise (default 1): the inverse starts from T * z, z the standard normal draw (the prior's
   * variance applies after, as always): Glow's sampling temperature. Below 1, samples trade variety for cleaner
   * strokes, and the inverse of a likelihood model overflows float32 less often; 0 gives the one image the mean
   * latent maps to.
   */
  temperature?: number;
  /** Index of the first image (to continue a run). */
  startIndex?: number;
  batchSize?: number;
  /** Redraws of a non-finite sample before giving up (default 3). */
  maxRedraws?: number;
  onProgress?: (done: number, total: number) => void;
  signal?: AbortSignal;
}

export const GENERATE_OPTIONS = optionNames<GenerateOptions>()({
  ...REVERSE_OPTIONS, count: true, labels: true, denoiseSigma: true, seed: true, temperature: true, startIndex: true, batchSize: true,
  maxRedraws: true, onProgress: true, signal: true,
});

export interface GenerateResult {
  /** count * C * S * S bytes, channel-first. */
  images: Uint8Array;
  labels: Int32Array | null;
  /** Samples that came out NaN/Inf and were redrawn from another noise stream. */
  redraws: Array<{ index: number; attempt: number }>;
}

/** Resolves the labels option into one label per image (null for an unconditional model). */
export function resolveLabels(model: TarFlow, count: number, labels: GenerateOptions['labels'], startIndex = 0): Int32Array | null {
  checkModel(model);
  const n = model.config.numClasses;
  if (n === 0) {
    // -1 means "no class", as for a conditional model's unguided draws; anything else asks for a class it has not got
    const none = labels === undefined || labels === -1 ||
      ((Array.isArray(labels) || labels instanceof Int32Array) && labels.length === count && Array.prototype.every.call(labels, (l: unknown) => l === -1));
    if (!none) throw validationError('ERR_TARFLOW_INVALID_ARGUMENT', 'labels', 'none, or -1 (the model is unconditional)', describeValue(labels));
    return null;
  }
  if (labels === undefined) return Int32Array.from({ length: count }, (_, i) => (startIndex + i) % n);
  if (typeof labels === 'number') {
    checkLabels('labels', [labels], n, true);
    return new Int32Array(count).fill(labels);
  }
  if (!Array.isArray(labels) && !(labels instanceof Int32Array)) {
    throw validationError('ERR_TARFLOW_DTYPE', 'labels', 'a class index, an array of them or an Int32Array', describeValue(labels));
  }
  checkLength('labels', labels, count, `${count} labels (one per image)`);
  // Checked before the copy: an Int32Array would turn 2.5 or 1e10 into some other, valid-looking class.
  checkLabels('labels', labels, n, true);
  return Int32Array.from(labels);
}

/** The largest image batch one result buffer holds. */
const MAX_RESULT_BYTES = bufferConstants.MAX_LENGTH;

/** The numeric options of generate() with their defaults, checked; a model is needed only for the labels. */
export function resolveGenerateOptions(options: GenerateOptions, imageBytes = 1) {
  checkObject('options', options);
  const count = checkNumber('count', options.count, { integer: true, min: 1, max: Math.floor(MAX_RESULT_BYTES / imageBytes) });
  return {
    count,
    seed: checkNumber('seed', options.seed ?? 0, SEED_RULE),
    // image k's noise starts at element k * imageBytes of its stream, and stream offsets stop at 2^53
    startIndex: checkNumber('startIndex', options.startIndex ?? 0, { integer: true, min: 0, max: Math.max(0, Math.floor(2 ** 53 / imageBytes) - count) }),
    batchSize: checkNumber('batchSize', options.batchSize ?? 256, { integer: true, min: 1 }),
    // At most MAX_REDRAWS: redraw r draws from stream sampleLatent + r, and the streams above belong to initialisation.
    maxRedraws: checkNumber('maxRedraws', options.maxRedraws ?? 3, { integer: true, min: 0, max: MAX_REDRAWS }),
    temperature: checkNumber('temperature', options.temperature ?? 1, { min: 0 }),
    denoiseSigma: optional(options.denoiseSigma, (v) => checkNumber('denoiseSigma', v, { min: 0 })),
    guidance: resolveGuidance(options),
    kvCache: optional(options.kvCache, (v) => checkOneOf<Precision>('kvCache', v, PRECISIONS)),
  };
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
  checkModel(model);
  const { inChannels: C, imgSize: S } = model.config;
  const { tokens: T, patchDim: D } = model.shape;
  const per = C * S * S;
  checkObject('options', options);
  checkKnownKeys('options', options, GENERATE_OPTIONS);
  const { count, seed, startIndex: start, batchSize, maxRedraws, temperature, denoiseSigma, guidance, kvCache } = resolveGenerateOptions(options, per);
  checkDenoisable(model, 'denoiseSigma', denoiseSigma);
  checkCallback('onProgress', options.onProgress);
  checkSignal('signal', options.signal);
  const batch = Math.min(batchSize, count);
  const labels = resolveLabels(model, count, options.labels, start);
  const images = new Uint8Array(count * per);
  const redraws: GenerateResult['redraws'] = [];
  const Tensor = model.backend.Tensor;

  // Samples `indices` (global image indices, local positions) from stream attempt; returns float images.
  const draw = (globalIdx: number[], localIdx: number[], attempt: number): Float32Array => {
    const B = globalIdx.length;
    // Allocated inside the try: when one allocation fails (out of memory), the ones before it are still freed.
    let z: TensorHandle | null = null;
    let out: TensorHandle | null = null;
    let lab: TensorHandle | null = null;
    try {
      z = new Tensor(model.dtype, [B, T, D]);
      out = new Tensor(model.dtype, [B, C, S, S]);
      lab = labels ? new Tensor('int32', [B], Int32Array.from(localIdx, (i) => labels[i])) : null;
      // Image k's latent is elements [k*T*D, (k+1)*T*D) of the stream: independent of batching.
      const contiguous = globalIdx.every((g, i) => g === globalIdx[0] + i);
      if (contiguous) model.ops.normal(z, seed, STREAMS.sampleLatent + attempt, globalIdx[0] * T * D);
      else {
        globalIdx.forEach((g, i) => {
          const row = z!.view(i * T * D, [T * D]);
          model.ops.normal(row, seed, STREAMS.sampleLatent + attempt, g * T * D);
          row.dispose();
        });
      }
      if (temperature !== 1) model.ops.axpby(z, z, temperature, 0);
      model.reverse(z, out, lab, { ...guidance, kvCache });
      let x = Float32Array.from(out.toArray());
      if (denoiseSigma !== undefined && denoiseSigma > 0) {
        // A non-finite sample will be redrawn; it must not stop the denoising of the others, whose score step
        // does not depend on it (the loss is a per-sample sum). It goes through as zeros and comes back NaN.
        const broken: number[] = [];
        for (let i = 0; i < B; i++) {
          if (!finite(x, i * per, per)) {
            broken.push(i);
            x.fill(0, i * per, (i + 1) * per);
          }
        }
        x = denoise(model, x, lab ? (lab.toArray() as Int32Array) : null, { sigma: denoiseSigma });
        for (const i of broken) x.fill(NaN, i * per, (i + 1) * per);
      }
      return x;
    } finally {
      z?.dispose();
      out?.dispose();
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
          throw new TarflowError('ERR_TARFLOW_NON_FINITE', `sample ${start + s + i} was NaN/Inf in ${maxRedraws + 1} draws; ${guidance.guidance > 0
            ? 'lower the guidance weight'
            : 'the inverse overflows float32, as it often does for likelihood models trained with uniform dequantization: lower the temperature (e.g. 0.9) or sample from a model trained with Gaussian noise'}` +
            `, or allow more redraws (maxRedraws, --max-redraws; a generate run resumed with more keeps its finished shards)`);
        }
        redraws.push({ index: start + s + i, attempt });
        img = draw([start + s + i], [s + i], attempt);
      }
      modelToPixels(img, images, (s + i) * per, model.trainingNoise);
    }
    options.onProgress?.(s + B, count);
  }
  return { images, labels, redraws };
}
