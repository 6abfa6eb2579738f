/** Shared test utilities: golden files, relative errors. */
import { readdirSync, existsSync } from 'node:fs';
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
