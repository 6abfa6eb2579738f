/**
 * Models trained by this project and shipped in the package (models/), with the settings they sample best with.
 */
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { TarflowError } from './errors.js';
import { LIKELIHOOD_TEMPERATURE } from './sampling.js';
import { describeValue, validationError } from './validate.js';

export interface PretrainedModel {
  /** Path inside the package. */
  file: string;
  description: string;
  /** The Gaussian noise level it was trained with: the denoising step's sigma (0: trained without, not denoised). */
  sigma: number;
  /** Guidance weight that gives its best samples. */
  guidance: number;
  /** Sampling temperature it samples with by default (see GenerateOptions.temperature). */
  temperature: number;
}

export const PRETRAINED: Readonly<Record<string, PretrainedModel>> = {
  'mnist-cond': {
    file: 'models/mnist-cond.safetensors',
    description: 'class-conditional MNIST sampler (small preset, Gaussian noise sigma 0.1, label drop 0.1)',
    sigma: 0.1,
    guidance: 2,
    temperature: 1,
  },
  'mnist-bpd': {
    file: 'models/mnist-bpd.safetensors',
    description: 'unconditional MNIST likelihood model (patch 2, width 128, 4 blocks x 2 layers, uniform dequantization)',
    sigma: 0,
    guidance: 0,
    // At 1, about a quarter of the samples overflow float32 in the inverse and are redrawn (27 of the first 100 at
    // seed 0 with run 28's weights, one of them in 4 draws, as many as the default 3 redraws allow), and many digits
    // are broken; at 0.7, 0 to 3 in 100, clean strokes.
    temperature: LIKELIHOOD_TEMPERATURE,
  },
};

const packageRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

/** The shipped model of that name, if there is one (inherited Object properties such as 'constructor' are not). */
export function shippedModel(name: string): PretrainedModel | undefined {
  return Object.hasOwn(PRETRAINED, name) ? PRETRAINED[name] : undefined;
}

/**
 * The shipped model a checkpoint argument names: by its name, or by the path of its file in this package (so
 * `models/mnist-cond.safetensors` samples with the same defaults as `mnist-cond`).
 */
export function shippedModelOf(checkpoint: string): PretrainedModel | undefined {
  const byName = shippedModel(checkpoint);
  if (byName) return byName;
  const path = resolve(checkpoint);
  return Object.values(PRETRAINED).find((m) => resolve(packageRoot, m.file) === path);
}

/**
 * A new sampling run's spec with the guidance and denoising sigma its checkpoint samples with where the caller left
 * them out: a shipped model's own (named, or by its file), else as given. `sample` and `generate` apply it, from the
 * library as from the command line.
 */
export function withSamplingDefaults<S extends { checkpoint: string; guidance?: number; denoiseSigma?: number }>(spec: S): S {
  const shipped = shippedModelOf(spec.checkpoint);
  if (!shipped) return spec;
  return { ...spec, guidance: spec.guidance ?? shipped.guidance, denoiseSigma: spec.denoiseSigma ?? (shipped.sigma > 0 ? shipped.sigma : undefined) };
}

/** The absolute path of a shipped model, or a clear error when the name is unknown or the file is missing. */
export function pretrainedPath(name: string): string {
  const entry = shippedModel(name);
  if (!entry) throw validationError('ERR_TARFLOW_INVALID_ARGUMENT', 'model', `the name of a shipped model (${Object.keys(PRETRAINED).join(', ')})`, describeValue(name));
  const path = join(packageRoot, entry.file);
  if (!existsSync(path)) {
    throw new TarflowError('ERR_TARFLOW_CHECKPOINT', `the shipped model '${name}' is missing from this installation (${path}); pass a checkpoint file (checkpoint, --checkpoint FILE)`);
  }
  return path;
}
