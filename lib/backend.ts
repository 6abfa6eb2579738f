/**
 * Loading a native backend and choosing a device. Both addons export the same `Tensor` class and `ops` table;
 * nothing above this file knows which one it drives.
 */
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { existsSync, readFileSync } from 'node:fs';
import { TarflowError, type TarflowErrorCode } from './errors.js';
import { checkOneOf, validationError } from './validate.js';

export type DType = 'float32' | 'float64' | 'int32';
export type FloatDType = 'float32' | 'float64';
export type DeviceName = 'cpu' | 'cuda';
export type DeviceOption = 'auto' | DeviceName;
/**
 * Working precision of the matrix products: 'fp32', or 'bf16' mixed precision (float32 tensors only): the inputs of
 * every product are rounded to bf16, sums stay fp32 (tensor cores on the GPU; the CPU emulates the rounding).
 */
export const PRECISIONS = ['fp32', 'bf16'] as const;
export type Precision = (typeof PRECISIONS)[number];

/** The last, optional argument of the matrix ops. */
export interface MatmulOptions {
  precision?: Precision;
}

export interface LinearOptions extends MatmulOptions {
  /** Also receives GELU(y) (y's shape): the MLP's activation from the same call. */
  gelu?: Tensor | null;
}

export interface LinearBackwardOptions extends MatmulOptions {
  /**
   * The pre-activation u when this layer's input was x = GELU(u) (dx's shape): dx becomes (dy W) * GELU'(u), the
   * gradient with respect to u, in the same call (no separate geluBackward pass). Needs dx and accumulateDx false.
   */
  geluInput?: Tensor | null;
}

/** A handle to native memory. JavaScript never sees the pointer; data crosses through toArray/copyFrom. */
export interface Tensor {
  readonly shape: number[];
  readonly dtype: DType;
  readonly size: number;
  readonly disposed: boolean;
  toArray(): Float32Array | Float64Array | Int32Array;
  copyFrom(data: Float32Array | Float64Array | Int32Array): this;
  /** A handle on elements [offset, offset + prod(shape)) of the same storage. */
  view(offset: number, shape: number[]): Tensor;
  fill(value: number): this;
  dispose(): void;
}

export interface BlockReverseWeights {
  projInWeight: Tensor;
  projInBias: Tensor;
  pos: Tensor;
  classEmbed: Tensor | null;
  projOutWeight: Tensor;
  projOutBias: Tensor;
  layers: Array<{
    ln1Weight: Tensor; ln1Bias: Tensor; qkvWeight: Tensor; qkvBias: Tensor; projWeight: Tensor; projBias: Tensor;
    ln2Weight: Tensor; ln2Bias: Tensor; fc1Weight: Tensor; fc1Bias: Tensor; fc2Weight: Tensor; fc2Bias: Tensor;
  }>;
}

export interface BlockReverseOptions {
  flip: boolean;
  nvp: boolean;
  heads: number;
  labels?: Tensor | null;
  guidance?: number;
  guideA?: boolean;
  guideB?: boolean;
  annealed?: boolean;
  tempUncond?: number;
  eps?: number;
  /** Matrix products of the layers. */
  precision?: Precision;
  /** Storage of the cached keys and values. */
  kvCache?: Precision;
}

/** The operation table. Outputs come first; every op writes into tensors the caller allocated. */
export interface Ops {
  copy(dst: Tensor, src: Tensor): void;
  axpby(y: Tensor, x: Tensor, alpha: number, beta: number): void;
  rowSumSquares(out: Tensor, x: Tensor): void;
  sumSquares(x: Tensor): number;
  /** Unused by lib/ (training checks sumSquares for NaN/Inf); kept as a plain op the tests and the GPU run check. */
  allFinite(x: Tensor): boolean;
  varUpdate(variance: Tensor, z: Tensor, rate: number): void;
  mulBroadcast(x: Tensor, s: Tensor): void;
  flipTokens(y: Tensor, x: Tensor): void;
  patchify(out: Tensor, x: Tensor, patchSize: number): void;
  unpatchify(out: Tensor, x: Tensor, patchSize: number): void;
  /** gelu and geluBackward: unfused references that linear's GELU epilogue is tested against; lib/ calls linear. */
  gelu(y: Tensor, x: Tensor): void;
  geluBackward(dx: Tensor, dy: Tensor, x: Tensor): void;
  addPosClass(h: Tensor, pos: Tensor, classEmbed: Tensor | null, labels: Tensor | null, flip: boolean): void;
  addPosClassBackward(dpos: Tensor, dclassEmbed: Tensor | null, dh: Tensor, labels: Tensor | null, flip: boolean): void;
  layerNorm(y: Tensor, mean: Tensor, rstd: Tensor, x: Tensor, weight: Tensor, bias: Tensor, eps: number): void;
  layerNormBackward(dx: Tensor, dweight: Tensor, dbias: Tensor, dy: Tensor, x: Tensor, mean: Tensor, rstd: Tensor, weight: Tensor, accumulateDx: boolean): void;
  linear(y: Tensor, x: Tensor, weight: Tensor, bias: Tensor | null, accumulate: boolean, options?: LinearOptions): void;
  linearBackward(dx: Tensor | null, dweight: Tensor | null, dbias: Tensor | null, dy: Tensor, x: Tensor, weight: Tensor, accumulateDx: boolean, options?: LinearBackwardOptions): void;
  attention(out: Tensor, probs: Tensor, qkv: Tensor, heads: number, temp: number, options?: MatmulOptions): void;
  attentionBackward(dqkv: Tensor, dout: Tensor, qkv: Tensor, probs: Tensor, heads: number, temp: number, options?: MatmulOptions): void;
  /** attention without the T x T probabilities: saves each row's log-sum-exp of the logits, lse [B, H, T]. */
  flashAttention(out: Tensor, lse: Tensor, qkv: Tensor, heads: number, temp: number, options?: MatmulOptions): void;
  /** attentionBackward from flashAttention's out and lse (probabilities recomputed tile by tile). */
  flashAttentionBackward(dqkv: Tensor, dout: Tensor, qkv: Tensor, out: Tensor, lse: Tensor, heads: number, temp: number, options?: MatmulOptions): void;
  couplingForward(v: Tensor, logdet: Tensor, u: Tensor, o: Tensor, nvp: boolean, accumulateLogdet: boolean): void;
  couplingBackward(du: Tensor, dout: Tensor, dv: Tensor, u: Tensor, o: Tensor, nvp: boolean, logdetGrad: number): void;
  normal(out: Tensor, seed: number, stream: number, offset: number): void;
  uniform(out: Tensor, seed: number, stream: number, offset: number): void;
  adamw(params: Tensor, grads: Tensor, m: Tensor, v: Tensor, options: { lr: number; beta1: number; beta2: number; eps: number; weightDecay: number; step: number }): void;
  blockReverse(x: Tensor, weights: BlockReverseWeights, options: BlockReverseOptions): void;
  getThreads(): number;
  /**
   * Live native (on CUDA: device) buffers and handles (handles are freed when the garbage collector finalizes
   * them), and the most bytes live at once since the last call with resetPeak (or since the start).
   */
  nativeMemory(resetPeak?: boolean): { buffers: number; bytes: number; handles: number; peakBytes: number; limitBytes: number };
  /**
   * Caps this backend's live buffers at `bytes` (0: no cap; the TARFLOW_MEMORY_LIMIT environment variable sets it
   * at load). An allocation past the cap throws ERR_TARFLOW_OUT_OF_MEMORY, as a failed one does, so a service
   * bounds its native memory instead of meeting the system's out-of-memory killer.
   */
  setMemoryLimit(bytes: number): void;
  setThreads(n: number): void;
}

export interface Backend {
  readonly device: DeviceName;
  readonly Tensor: new (dtype: DType, shape: number[], data?: Float32Array | Float64Array | Int32Array) => Tensor;
  readonly ops: Ops;
  /** Waits until the device has finished all queued work (a no-op on the CPU, whose ops return when done). */
  synchronize(): void;
  /**
   * For benchmarks and diagnostics: which kernel bf16 matrix products run on now. CUDA: 'wgmma' (H100/H200 with the
   * default sm_90a build) or 'mma' (`TARFLOW_CUDA_GEMM` chooses; see native/cuda/gemm_bf16.cu). CPU: 'amx' (Xeons
   * with AMX), 'avx512bf16' (AMD Zen 4 and later, Intel Cooper Lake) or 'reference' (`TARFLOW_CPU_GEMM` chooses; see
   * native/cpu/gemm_bf16.cc).
   */
  bf16GemmKernel?(): string;
}

const packageRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const require = createRequire(import.meta.url);

let cpuBackend: Backend | undefined;
let cudaBackend: Backend | undefined;
let cudaFailure: string | undefined;
let warnedFallback = false;

/**
 * Native ops throw plain Errors carrying a `code`; re-throwing them as TarflowError lets callers use one
 * `instanceof` check for every failure the library reports.
 */
function wrapOps<T extends object>(raw: T): T {
  const wrapped: Record<string, unknown> = {};
  for (const [name, fn] of Object.entries(raw as unknown as Record<string, (...a: unknown[]) => unknown>)) {
    wrapped[name] = (...args: unknown[]) => {
      try {
        return fn(...args);
      } catch (err) {
        throw asTarflowError(name, err);
      }
    };
  }
  return wrapped as T;
}

function asTarflowError(name: string, err: unknown): unknown {
  const e = err as Error & { code?: string };
  if (e instanceof TarflowError || typeof e?.code !== 'string' || !e.code.startsWith('ERR_TARFLOW')) return err;
  // Some native messages already name their op or method; say it once.
  const named = e.message.startsWith(`${name}: `) || e.message.startsWith(`${name}(`);
  return new TarflowError(e.code as TarflowErrorCode, named ? e.message : `${name}: ${e.message}`);
}

const wrappedTensorClasses = new WeakSet<object>();

/**
 * The Tensor class with its native failures (a disposed tensor, a wrong length, a bad dtype) as TarflowErrors, as
 * the ops' are: its methods and accessors are wrapped on the prototype, which the tensors the ops make share, and
 * the constructor through a Proxy, so `instanceof` still holds for every tensor.
 */
function wrapTensorClass(cls: Backend['Tensor']): Backend['Tensor'] {
  const proto = cls.prototype as Record<string, unknown>;
  if (!wrappedTensorClasses.has(proto)) {
    wrappedTensorClasses.add(proto);
    for (const [name, d] of Object.entries(Object.getOwnPropertyDescriptors(proto))) {
      if (name === 'constructor' || !d.configurable) continue;
      const guard = <A extends unknown[]>(fn: (this: unknown, ...a: A) => unknown) => function (this: unknown, ...args: A) {
        try {
          return fn.apply(this, args);
        } catch (err) {
          throw asTarflowError(name, err);
        }
      };
      if (typeof d.value === 'function') Object.defineProperty(proto, name, { ...d, value: guard(d.value) });
      else if (d.get) Object.defineProperty(proto, name, { ...d, get: guard(d.get) });
    }
  }
  return new Proxy(cls, {
    construct(target, args, newTarget) {
      try {
        return Reflect.construct(target, args, newTarget);
      } catch (err) {
        throw asTarflowError('new Tensor', err);
      }
    },
  });
}

const UNITS: Readonly<Record<string, number>> = { '': 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40 };

/** A memory limit as bytes: a whole number, or one with K, M, G or T (powers of 1024, as in "12G"); 0 is none. */
export function parseMemoryLimit(text: string, name = 'TARFLOW_MEMORY_LIMIT'): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$/i.exec(text);
  const bytes = m ? Math.floor(Number(m[1]) * UNITS[m[2].toLowerCase()]) : NaN;
  if (!Number.isSafeInteger(bytes)) {
    throw validationError('ERR_TARFLOW_INVALID_ARGUMENT', name, 'a number of bytes, optionally with K, M, G or T (as in 12G), or 0 for no limit', JSON.stringify(text));
  }
  return bytes;
}

/** TARFLOW_MEMORY_LIMIT in bytes, when it is set. */
function envMemoryLimit(): number | undefined {
  const text = process.env.TARFLOW_MEMORY_LIMIT;
  return text === undefined || text === '' ? undefined : parseMemoryLimit(text);
}

/** Applies TARFLOW_MEMORY_LIMIT to a backend as it loads (each thread's load sets the same process-wide cap). */
function withEnvMemoryLimit(backend: Backend): Backend {
  const limit = envMemoryLimit();
  if (limit !== undefined) backend.ops.setMemoryLimit(limit);
  return backend;
}

function loadCpu(): Backend {
  if (!cpuBackend) {
    let addon;
    try {
      const nodeGypBuild = require('node-gyp-build') as (dir: string) => {
        backend: string; Tensor: Backend['Tensor']; ops: Ops; bf16GemmKernel: () => string;
      };
      addon = nodeGypBuild(packageRoot);
    } catch (err) {
      throw new TarflowError('ERR_TARFLOW_DEVICE',
        `the CPU addon is not built (${(err as Error).message.split('\n')[0]}); run 'npm install' (or 'npm run build:native') in ${packageRoot}`,
        { cause: err });
    }
    const host = wrapOps({ bf16GemmKernel: addon.bf16GemmKernel });
    cpuBackend = withEnvMemoryLimit({
      device: 'cpu', Tensor: wrapTensorClass(addon.Tensor), ops: wrapOps(addon.ops), synchronize: () => {}, bf16GemmKernel: host.bf16GemmKernel,
    });
  }
  return cpuBackend;
}

/**
 * Why the install left no CUDA addon, as scripts/build-cuda.mjs recorded it in build-cuda/install-status.json under
 * `root` (the package), or the fix when it left no record.
 */
export function cudaInstallReason(root: string = packageRoot): string {
  const fallback = 'run `npm run build:cuda` with nvcc on the PATH';
  try {
    const status = JSON.parse(readFileSync(join(root, 'build-cuda', 'install-status.json'), 'utf8')) as { built?: unknown; reason?: unknown };
    return status.built === false && typeof status.reason === 'string' && status.reason ? status.reason : fallback;
  } catch {
    return fallback;
  }
}

function tryLoadCuda(): Backend | undefined {
  if (cudaBackend || cudaFailure) return cudaBackend;
  const path = join(packageRoot, 'build-cuda', 'Release', 'tarflow_cuda.node');
  if (!existsSync(path)) {
    cudaFailure = `the CUDA addon is not built: ${cudaInstallReason()}`;
    return undefined;
  }
  try {
    const addon = require(path) as {
      Tensor: Backend['Tensor']; ops: Ops; synchronize: () => void; bf16GemmKernel: () => string; deviceCount?: () => number; deviceInfo?: () => { reason?: string };
    };
    const count = addon.deviceCount ? addon.deviceCount() : 0;
    if (count < 1) {
      const reason = addon.deviceInfo?.().reason;
      cudaFailure = `the CUDA addon loaded but no GPU answered${reason ? ` (${reason})` : ''}`;
      return undefined;
    }
    const host = wrapOps({ synchronize: addon.synchronize, bf16GemmKernel: addon.bf16GemmKernel });
    cudaBackend = withEnvMemoryLimit({
      device: 'cuda', Tensor: wrapTensorClass(addon.Tensor), ops: wrapOps(addon.ops), synchronize: host.synchronize, bf16GemmKernel: host.bf16GemmKernel,
    });
  } catch (err) {
    cudaFailure = `the CUDA addon failed to load: ${(err as Error).message}`;
  }
  return cudaBackend;
}

/** Resolves 'auto' | 'cpu' | 'cuda' (default: TARFLOW_DEVICE, else 'auto') to a loaded backend. */
export function getBackend(device?: DeviceOption): Backend {
  const name = device === undefined && process.env.TARFLOW_DEVICE !== undefined ? 'TARFLOW_DEVICE' : 'device';
  const requested = checkOneOf(name, device ?? process.env.TARFLOW_DEVICE ?? 'auto', ['auto', 'cpu', 'cuda']);
  envMemoryLimit(); // a malformed limit is refused here, not taken for a failure to load the CUDA addon
  if (requested === 'cpu') return loadCpu();
  if (requested === 'cuda') {
    const cuda = tryLoadCuda();
    if (!cuda) throw new TarflowError('ERR_TARFLOW_DEVICE', `device 'cuda' was requested but ${cudaFailure}; use device 'cpu' or 'auto'`);
    return cuda;
  }
  const cuda = tryLoadCuda();
  if (cuda) return cuda;
  if (!warnedFallback && !process.env.TARFLOW_QUIET) {
    warnedFallback = true;
    process.emitWarning(`tarflow: running on the CPU: ${cudaFailure}.`, { code: 'TARFLOW_CPU_FALLBACK' });
  }
  return loadCpu();
}
