/**
 * Models trained by this project and shipped in the package (models/), with the settings they sample best with.
 */
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { TarflowError } from './errors.js';

export interface PretrainedModel {
  /** Path inside the package. */
  file: string;
  description: string;
  /** The Gaussian noise level it was trained with: the denoising step's sigma. */
  sigma: number;
  /** Guidance weight that gives its best samples. */
  guidance: number;
}

export const PRETRAINED: Readonly<Record<string, PretrainedModel>> = {
  'mnist-cond': {
    file: 'models/mnist-cond.safetensors',
    description: 'class-conditional MNIST sampler (small preset, Gaussian noise sigma 0.1, label drop 0.1)',
    sigma: 0.1,
    guidance: 2,
  },
};

const packageRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

/** The absolute path of a shipped model, or a clear error when the name is unknown or the file is missing. */
export function pretrainedPath(name: string): string {
  const entry = PRETRAINED[name];
  if (!entry) {
    throw new TarflowError('ERR_TARFLOW_INVALID_ARGUMENT', `no shipped model named '${name}'; the package ships ${Object.keys(PRETRAINED).join(', ')}`);
  }
  const path = join(packageRoot, entry.file);
  if (!existsSync(path)) {
    throw new TarflowError('ERR_TARFLOW_CHECKPOINT', `the shipped model '${name}' is missing from this installation (${path}); pass --checkpoint FILE`);
  }
  return path;
}
