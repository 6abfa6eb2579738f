/**
 * Pixels (bytes 0..255) to model space and back. Training, evaluation and sampling must map the same way, or
 * bits/dim and samples are off by the difference, and the map depends on the noise a model was trained with:
 * - Gaussian noise augmentation: p -> p/127.5 - 1, so 0..255 spans [-1, 1]; back by rounding (as the reference
 *   saves its samples).
 * - Uniform dequantization: p -> (p + u)/128 - 1 with u in [0, 1), so pixel p owns [p/128 - 1, (p + 1)/128 - 1);
 *   back to the pixel whose bin the value falls in.
 */
import type { TrainingNoise } from './model.js';

const GAUSSIAN_LEVELS = Float64Array.from({ length: 256 }, (_, p) => p / 127.5 - 1);
const UNIFORM_LEVELS = Float64Array.from({ length: 256 }, (_, p) => p / 128 - 1);

/** Model-space value of each pixel before any noise is added (for uniform dequantization, its bin's lower edge). */
export function pixelLevels(noise: TrainingNoise): Float64Array {
  return noise === 'uniform' ? UNIFORM_LEVELS : GAUSSIAN_LEVELS;
}

/** Model-space values back to pixels, clamped to 0..255 (NaN lands on 0), into out from offset. */
export function modelToPixels(x: ArrayLike<number>, out: Uint8Array, offset: number, noise: TrainingNoise): void {
  const uniform = noise === 'uniform';
  for (let i = 0; i < x.length; i++) {
    const v = uniform ? Math.floor((x[i] + 1) * 128) : Math.round((x[i] + 1) * 127.5);
    out[offset + i] = v < 0 ? 0 : v > 255 ? 255 : v;
  }
}
