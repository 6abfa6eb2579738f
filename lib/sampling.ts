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
