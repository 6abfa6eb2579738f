/** Shared test utilities: golden files, relative errors. */
import { readdirSync, existsSync, mkdtempSync, rmSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { seededRandom } from '../lib/random.js';
import type { DeviceName, Precision } from '../lib/backend.js';
import type { TarFlowConfig } from '../lib/config.js';
import { TarFlow } from '../lib/model.js';
import { ParamSet } from '../lib/params.js';
import { bf16Tensor, toFloat32 } from '../lib/safetensors.js';
import { delimiter, join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

// The benchmark uses it too, and bench/ may not import from test/.
export { withEnv } from '../bench/env.js';

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

/** How runNativeCheck builds and runs a check (all paths relative to the repository). */
export interface NativeCheckBuild {
  /** Default: test/native/<name>.cc. */
  sources?: string[];
  /** Default: -std=c++17. */
  flags?: string[];
  /** Build under AddressSanitizer and UndefinedBehaviorSanitizer at -O1 (default), or optimised (-O2). */
  sanitize?: boolean;
  args?: string[];
  /** The compiler (default: CXX, else g++), e.g. a cross compiler. */
  cxx?: string;
  /** A command the built check runs under (an emulator such as qemu-aarch64), or none. */
  runner?: string;
}

/**
 * Compiles a native check (by default test/native/<name>.cc, a CPU emulation of a CUDA kernel's index logic) and runs
 * it; returns null when it passed or no C++ compiler exists (with a warning), else the failure's text.
 */
export function runNativeCheck(name: string, build: NativeCheckBuild = {}): string | null {
  const dir = mkdtempSync(join(tmpdir(), `tarflow-${name}-`));
  try {
    const exe = join(dir, name);
    const cxx = build.cxx ?? process.env.CXX ?? 'g++';
    const sources = (build.sources ?? [join('test', 'native', `${name}.cc`)]).map((s) => join(repoRoot, s));
    const compile = (flags: string[]) =>
      spawnSync(cxx, [...(build.flags ?? ['-std=c++17']), '-Wall', '-Wextra', '-Werror', ...flags, '-o', exe, ...sources], { encoding: 'utf8' });
    // AddressSanitizer also catches reads outside the operands (rows past the matrix), which change no result.
    let built = compile(build.sanitize === false ? ['-O2'] : ['-O1', '-g', '-fsanitize=address,undefined', '-fno-sanitize-recover=all']);
    if (built.error && (built.error as NodeJS.ErrnoException).code === 'ENOENT') {
      console.warn(`  skipped: no C++ compiler (${cxx}) to build ${sources.join(' ')}`);
      return null;
    }
    if (built.status !== 0 && /fsanitize|libasan|libubsan/.test(built.stderr)) built = compile(['-O2']);
    if (built.status !== 0) return `compiling ${sources.join(' ')} failed:\n${built.stderr}`;
    const [command, args] = build.runner ? [build.runner, [exe, ...(build.args ?? [])]] : [exe, build.args ?? []];
    const run = spawnSync(command, args, { encoding: 'utf8', env: { ...process.env, ASAN_OPTIONS: 'detect_leaks=0' } });
    return run.status === 0 ? null : `${name} checks failed:\n${run.stderr}${run.stdout}`;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Whether `command` is on the PATH. */
export function onPath(command: string): boolean {
  return (process.env.PATH ?? '').split(delimiter).some((dir) => dir !== '' && existsSync(join(dir, command)));
}

/** The `code` of the error fn throws, or 'none'. */
export function errorCode(fn: () => void): string | undefined {
  try {
    fn();
  } catch (err) {
    return (err as { code?: string }).code;
  }
  return 'none';
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

/** A generator of uniform numbers in [0, 1), and the fuzz tests' two draws from it. */
export type Rng = () => number;
export const pick = <T>(r: Rng, xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!;
export const int = (r: Rng, n: number) => Math.floor(r() * n);

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

/** x rounded to bf16 (round to nearest even), through the library's own bf16 conversion. */
export function roundBf16(x: Float32Array): Float32Array {
  return toFloat32(bf16Tensor(x, [x.length]));
}

export interface ForwardBackward {
  loss: number;
  logdet: Float64Array;
  z: Float32Array | Float64Array;
  /** Every parameter gradient, in the flat layout. */
  grads: Float32Array | Float64Array;
  /** dLoss/dx. */
  dx: Float32Array | Float64Array;
}

/** One training forward and backward of `model` on a batch of images (B*C*S*S values in [-1, 1]). */
export function forwardBackward(model: TarFlow, images: Float32Array, labels: Int32Array | null): ForwardBackward {
  const { inChannels: C, imgSize: S } = model.config;
  const ws = model.workspace(images.length / (C * S * S));
  model.setInputs(ws, images, labels);
  const grads = new ParamSet(model.backend, model.config, model.specs, model.dtype);
  try {
    const { loss, logdet } = model.forward(ws);
    model.backward(ws, grads);
    return { loss, logdet, z: ws.z.toArray() as Float32Array, grads: grads.flat.toArray() as Float32Array, dx: ws.dx.toArray() as Float32Array };
  } finally {
    grads.dispose();
  }
}

export interface RunSpec {
  device: DeviceName;
  precision: Precision;
  fusedAttention?: boolean;
}

/**
 * Relative errors of a float32 model run `a` against the same model run `b` (same parameters, same batch of images
 * and labels, one forward and backward): latents, per-sample log-dets, loss, every gradient, dL/dx. Parameters are
 * randomizeParams(scale), with the log-scale half of each proj_out bias shifted by 0.1 so that log-dets sit well
 * away from zero, as a trained model's do (a mean of small values of both signs would make their relative error
 * a measure of cancellation).
 */
export function modelErrors(cfg: Partial<TarFlowConfig>, batch: number, a: RunSpec, b: RunSpec, scale = 0.05, seed = 1): Record<'z' | 'logdet' | 'loss' | 'gradients' | 'dx', number> {
  const ma = new TarFlow(cfg, { ...a, seed });
  const mb = new TarFlow(cfg, { ...b, noInit: true });
  try {
    randomizeParams(ma, seed, scale);
    const params = ma.params.flat.toArray() as Float32Array;
    if (ma.config.nvp) {
      for (const s of ma.specs.filter((t) => /proj_out\.bias$/.test(t.name))) for (let i = 0; i < s.size / 2; i++) params[s.offset + i] += 0.1;
    }
    ma.params.flat.copyFrom(params);
    mb.params.flat.copyFrom(params);
    const { inChannels: C, imgSize: S, numClasses } = ma.config;
    const g = gaussian(seed + 1);
    const images = Float32Array.from({ length: batch * C * S * S }, () => Math.max(-1, Math.min(1, 0.5 * g())));
    const labels = numClasses > 0 ? Int32Array.from({ length: batch }, (_, i) => (i === 1 ? -1 : i % numClasses)) : null;
    const ra = forwardBackward(ma, images, labels), rb = forwardBackward(mb, images, labels);
    return {
      z: relError(ra.z, rb.z),
      logdet: relError(ra.logdet, rb.logdet),
      loss: Math.abs(ra.loss - rb.loss) / Math.max(Math.abs(rb.loss), 1e-6),
      gradients: relError(ra.grads, rb.grads),
      dx: relError(ra.dx, rb.dx),
    };
  } finally {
    ma.dispose();
    mb.dispose();
  }
}
