/**
 * Likelihood: bits per dimension with uniform dequantization, x = 2(p + U)/256 - 1, so that the number is a
 * proper discrete log-likelihood (the ln 128 term is the Jacobian of mapping [0, 256) onto [-1, 1)).
 */
import type { ImageDataset } from './data.js';
import { checkDatasetFits, matchClasses } from './data.js';
import { TarflowError } from './errors.js';
import { SEED_RULE, checkModel, type TarFlow } from './model.js';
import { pixelLevels } from './pixels.js';
import { STREAMS } from './streams.js';
import { checkArray, checkBatch, checkCallback, checkKnownKeys, checkNumber, checkObject, checkSignal, optional, type OptionNames } from './validate.js';


export interface ScoreOptions {
  batchSize?: number;
  /** Seed of the dequantization noise (default 0). */
  seed?: number;
  /** Called after each batch with (images done, total). */
  onProgress?: (done: number, total: number) => void;
  /** Checked between batches. */
  signal?: AbortSignal;
}

const SCORE_OPTIONS = { batchSize: true, seed: true, onProgress: true, signal: true } as const satisfies OptionNames<ScoreOptions>;

/** The batch size and dequantization seed of a scoring run, checked, with their defaults. */
export function checkScoreOptions(options: Pick<ScoreOptions, 'batchSize' | 'seed'>): { batchSize: number; seed: number } {
  checkObject('options', options);
  return {
    batchSize: checkNumber('batchSize', options.batchSize ?? 256, { integer: true, min: 1 }),
    seed: checkNumber('seed', options.seed ?? 0, SEED_RULE),
  };
}

/**
 * Per-image bits/dim of uint8 images (N*C*S*S bytes) under the model, with their labels for a conditional model
 * (null scores under the mean class embedding).
 */
export function scoreImages(model: TarFlow, images: Uint8Array, labels: Int32Array | null, options: ScoreOptions = {}): Float64Array {
  checkModel(model);
  const { inChannels: C, imgSize: S } = model.config;
  const per = C * S * S;
  checkArray('images', images, [Uint8Array]);
  const N = checkBatch('images', images, per, `${C} x ${S} x ${S} uint8 images`);
  model.checkLabels(labels, N);
  const { batchSize, seed } = checkScoreOptions(options);
  checkKnownKeys('options', options, SCORE_OPTIONS);
  checkCallback('onProgress', options.onProgress);
  checkSignal('signal', options.signal);
  const batch = Math.min(batchSize, N);
  const out = new Float64Array(N);
  const noise = new model.backend.Tensor(model.dtype, [batch * per]);
  const host = model.dtype === 'float32' ? new Float32Array(batch * per) : new Float64Array(batch * per);
  // bits/dim is always under uniform dequantization, whatever noise the model was trained with
  const levels = pixelLevels('uniform');
  try {
    for (let start = 0; start < N; start += batch) {
      if (options.signal?.aborted) throw new TarflowError('ERR_TARFLOW_ABORTED', 'scoring was aborted');
      const B = Math.min(batch, N - start);
      const ws = model.workspace(B);
      const x = B === batch ? host : host.subarray(0, B * per);
      for (let i = 0; i < B * per; i++) x[i] = levels[images[start * per + i]!]!;
      ws.x.copyFrom(x);
      const nz = B === batch ? noise : noise.view(0, [B * per]);
      model.ops.uniform(nz, seed, STREAMS.evalDequant, start * per);
      model.ops.axpby(ws.x, nz, 1 / 128, 1);
      if (nz !== noise) nz.dispose();
      model.setLabels(ws, labels ? labels.subarray(start, start + B) : null);
      const { logdet } = model.forward(ws);
      out.set(model.bitsPerDim(ws, logdet), start);
      options.onProgress?.(start + B, N);
    }
  } finally {
    noise.dispose();
  }
  return out;
}

export interface EvaluateResult {
  bitsPerDim: number;
  images: number;
}

/** Dataset-average bits/dim (conditional models use the dataset's labels). */
export function evaluateBpd(model: TarFlow, data: ImageDataset, options: ScoreOptions & { limit?: number } = {}): EvaluateResult {
  checkModel(model);
  checkObject('data', data);
  checkScoreOptions(options);
  checkKnownKeys('options', options, { ...SCORE_OPTIONS, limit: true });
  const limit = optional(options.limit, (v) => checkNumber('limit', v, { integer: true, min: 1 }));
  data = matchClasses(data, model.config.numClasses > 0 ? model.classNames : null);
  checkDatasetFits(data, model.config);
  const per = data.channels * data.size * data.size;
  const n = Math.min(limit ?? data.count, data.count);
  const labels = model.config.numClasses > 0 && data.labels ? data.labels.subarray(0, n) : null;
  const { limit: _, ...scoreOptions } = options;
  const bpd = scoreImages(model, data.images.subarray(0, n * per), labels, scoreOptions);
  let sum = 0;
  for (const v of bpd) sum += v;
  return { bitsPerDim: sum / n, images: n };
}
