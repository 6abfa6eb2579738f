/** Shared test utilities: golden files, relative errors. */
import { readdirSync, existsSync } from 'node:fs';
import { seededRandom } from '../lib/data.js';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

export const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

/** Folder of golden-*.safetensors files: TARFLOW_GOLDEN_DIR, default ../shared/reference beside the repo. */
export function goldenDir(): string {
  return process.env.TARFLOW_GOLDEN_DIR ?? resolve(repoRoot, '..', 'shared', 'reference');
}

export function goldenFiles(): string[] {
  const dir = goldenDir();
  if (!existsSync(dir)) return [];
  return readdirSync(dir).filter((f) => /^golden-.*\.safetensors$/.test(f)).sort().map((f) => join(dir, f));
}

type Num = ArrayLike<number>;

/** ||a - b|| / ||b|| (with a floor on ||b|| so an all-zero reference compares absolutely). */
export function relError(a: Num, b: Num): number {
  if (a.length !== b.length) throw new Error(`length mismatch: ${a.length} vs ${b.length}`);
  let num = 0, den = 0;
  for (let i = 0; i < a.length; i++) {
    const d = a[i] - b[i];
    num += d * d;
    den += b[i] * b[i];
  }
  if (!Number.isFinite(num)) return Infinity;
  return Math.sqrt(num) / Math.max(Math.sqrt(den), 1e-12);
}

/** A tiny deterministic generator in [0, 1) for choosing test entries and values (the library's own). */
export const mulberry32 = seededRandom;

/** Standard normal draws from a mulberry32 stream (Box-Muller). */
export function gaussian(seed: number): () => number {
  const u = mulberry32(seed);
  return () => Math.sqrt(-2 * Math.log(1 - u())) * Math.cos(2 * Math.PI * u());
}

interface RandomizableModel {
  specs: Array<{ name: string; offset: number; size: number; shape: number[] }>;
  params: { flat: { toArray(): Float32Array | Float64Array | Int32Array; copyFrom(d: Float32Array | Float64Array): unknown } };
  ops: { normal(out: unknown, seed: number, stream: number, offset: number): void };
}

/**
 * Gives every parameter a non-trivial value (a fresh model's proj_out weight is zero, which hides most of the
 * network from gradients and from the inverse): N(0,1) noise from the native generator, then per tensor
 * LayerNorm weights 1 + 0.1 n, proj_out weights `outScale * n`, everything else `scale * n`.
 */
export function randomizeParams(model: RandomizableModel, seed: number, scale = 0.05, outScale = 0.02): void {
  model.ops.normal(model.params.flat, seed, 77, 0);
  const noise = model.params.flat.toArray() as Float32Array | Float64Array;
  // the alignment padding between tensors stays zero, as in a fresh or loaded model
  const a = noise instanceof Float32Array ? new Float32Array(noise.length) : new Float64Array(noise.length);
  for (const s of model.specs) {
    const isNormW = /norm\.weight$/.test(s.name);
    const k = isNormW ? 0.1 : /proj_out\.weight$/.test(s.name) ? outScale : /norm\.bias$/.test(s.name) ? 0.1 : scale;
    for (let i = s.offset; i < s.offset + s.size; i++) a[i] = (isNormW ? 1 : 0) + k * noise[i];
  }
  model.params.flat.copyFrom(a);
}
