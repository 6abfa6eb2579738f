/**
 * The kernel rows of `npm run bench` (GEMM and causal attention): what each row runs and the flops it counts, kept
 * apart from the benchmark.js runner in run.ts so that the tests can check both without timing anything.
 */
import type { Backend, Precision, Tensor } from '../lib/backend.js';
import { withEnv } from './env.js';
import { attentionBenchFlops } from './cost.js';
import type { BenchRow } from './report.js';

/** The middle value; of an even count, the mean of the two middle ones. */
export function median(xs: readonly number[]): number {
  if (xs.length === 0) throw new RangeError('median of no values');
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  // The upper of the two middle values would make a median of --quick's two timings their maximum.
  return s.length % 2 === 1 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

export interface KernelCase {
  name: string;
  /** Flops one call of `run` counts. */
  flops: number;
  /** One call of the kernel(s), returning once the device has finished them. */
  run: () => void;
  /** The bf16 GEMM kernel the case pins (CPU bf16 rows: the fast kernel auto picks, or the reference); absent where the library picks. */
  kernel?: string;
}

export interface KernelCases {
  cases: KernelCase[];
  /** Frees the cases' tensors: left alive, they would count in the peak memory the targets table reports later. */
  dispose(): void;
}

/** A float32 tensor of standard normal values (the library's own generator, so the same seed gives the same values). */
export function randomTensor(backend: Backend, shape: number[], seed: number): Tensor {
  const t = new backend.Tensor('float32', shape);
  backend.ops.normal(t, seed, 0, 0);
  return t;
}

/** Tensors freed together: `keep` adds one and returns it, `dispose` frees all kept so far. */
export function tensorSet(): { keep: <T extends Tensor>(t: T) => T; dispose: () => void } {
  const tensors: Tensor[] = [];
  return { keep: (t) => (tensors.push(t), t), dispose: () => tensors.splice(0).forEach((t) => t.dispose()) };
}

/** The cases `make` returns, with a dispose for the tensors it `keep`s; when an allocation fails (the memory cap), those made so far are freed. */
function allocating(make: (keep: <T extends Tensor>(t: T) => T) => KernelCase[]): KernelCases {
  const set = tensorSet();
  try {
    return { cases: make(set.keep), dispose: set.dispose };
  } catch (err) {
    set.dispose();
    throw err;
  }
}

/** The model's product shapes (the `small` preset at batch 256: 12,544 tokens) and 1024^3. */
export const GEMM_SHAPES: ReadonlyArray<readonly [string, number, number, number]> = [
  ['1024^3', 1024, 1024, 1024],
  ['qkv   M=12544 N=384 K=128', 12544, 384, 128],
  ['proj  M=12544 N=128 K=128', 12544, 128, 128],
  ['fc1   M=12544 N=512 K=128', 12544, 512, 128],
  ['fc2   M=12544 N=128 K=512', 12544, 128, 512],
  ['decode M=100 N=512 K=128', 100, 512, 128],
];

/** y[M,N] = x[M,K] w[N,K]^T at each shape: 2 M N K flops. bf16 on the CPU: each shape on the kernel auto picks and on the reference. */
export function gemmCases(backend: Backend, precision: Precision): KernelCases {
  const kernels = precision === 'bf16' && backend.device === 'cpu' ? [...new Set([backend.bf16GemmKernel!(), 'reference'])] : [undefined];
  return allocating((keep) => GEMM_SHAPES.flatMap(([shape, m, n, k]) => {
    const x = keep(randomTensor(backend, [m, k], 1)), w = keep(randomTensor(backend, [n, k], 2)), y = keep(new backend.Tensor('float32', [m, n]));
    // The wait matters on CUDA, where linear returns once the product is queued.
    const product = () => {
      backend.ops.linear(y, x, w, null, false, { precision });
      backend.synchronize();
    };
    return kernels.map((kernel) => ({
      name: kernel ? `${shape} ${kernel}` : shape,
      flops: 2 * m * n * k,
      ...(kernel ? { kernel } : {}),
      run: kernel ? () => withEnv('TARFLOW_CPU_GEMM', kernel, product) : product,
    }));
  }));
}

/** The attention shapes the CPU trains: the `small` preset (49 tokens, batch 256) and the likelihood model (196 tokens, batch 64), 2 heads of 64. */
export const ATTENTION_SHAPES: ReadonlyArray<readonly [string, number, number]> = [['small B=256 T=49', 256, 49], ['bpd   B=64 T=196', 64, 196]];

/**
 * The training form of causal attention (attention / attentionBackward, or the fused pair on CUDA, where the model
 * trains with it), forward alone and forward with backward. Flops by FlashAttention's convention
 * (attentionBenchFlops: the causal half; the backward 2.5 forwards), as the targets table and the reference figures
 * count them, so the rows compare. The unfused backward reads the saved probabilities instead of recomputing them
 * (2 forwards of products), so its forward+backward rate counts 3.5 forwards of flops for 3 done.
 */
export function attentionCases(backend: Backend, precision: Precision): KernelCases & { fused: boolean } {
  const W = 128, H = 2, hd = W / H;
  const fused = backend.device === 'cuda';
  const mm = { precision };
  const cases = allocating((keep) => ATTENTION_SHAPES.flatMap(([shape, B, T]) => {
    const qkv = keep(randomTensor(backend, [B, T, 3 * W], 1)), dout = keep(randomTensor(backend, [B, T, W], 2));
    const out = keep(new backend.Tensor('float32', [B, T, W])), dqkv = keep(new backend.Tensor('float32', [B, T, 3 * W]));
    const saved = keep(new backend.Tensor('float32', fused ? [B, H, T] : [B, H, T, T]));
    const forward = () => fused ? backend.ops.flashAttention(out, saved, qkv, H, 1, mm) : backend.ops.attention(out, saved, qkv, H, 1, mm);
    const backward = () => fused ? backend.ops.flashAttentionBackward(dqkv, dout, qkv, out, saved, H, 1, mm) : backend.ops.attentionBackward(dqkv, dout, qkv, saved, H, 1, mm);
    const flops = attentionBenchFlops(B, H, T, hd);
    return [
      { name: `${shape} forward`, flops: flops.forward, run: () => { forward(); backend.synchronize(); } },
      { name: `${shape} forward+backward`, flops: flops.forwardBackward, run: () => { forward(); backward(); backend.synchronize(); } },
    ];
  }));
  return { ...cases, fused };
}

/** What benchmark.js measured of one case: its samples and their relative margin of error (percent). */
export interface KernelTiming {
  /** Seconds per call, one value per timed cycle (benchmark.js's `stats.sample`, each the mean call of its cycle). */
  sample: readonly number[];
  rme: number;
}

/**
 * A kernel case's row, at the median of benchmark.js's samples (its own figure, `hz`, is their mean): the other parts
 * report medians, and one slow cycle (another process took the cores) moves a mean, not a median. Its name drops the
 * padding that aligns the shapes in the text ("qkv   M=..."), which a reader of the JSON would have to match exactly.
 */
export function kernelRow(part: 'gemm' | 'attention', precision: Precision, c: KernelCase, t: KernelTiming, fused?: boolean): BenchRow {
  const seconds = median(t.sample);
  return {
    part, name: c.name.replace(/\s+/g, ' '), value: c.flops / seconds / 1e9, unit: 'GFLOP/s', precision,
    median_ms: 1000 * seconds, samples: t.sample.length, rme_percent: t.rme, flops: c.flops, ...(c.kernel ? { kernel: c.kernel } : {}),
    ...(fused === undefined ? {} : { fused }),
  };
}

/** The row's text line: `label`, the case's own (aligned) name padded to `width`, then the rate. */
export function formatKernelRow(label: string, width: number, c: KernelCase, r: BenchRow): string {
  return `${label} ${c.name.padEnd(width)} ${r.value.toFixed(1).padStart(7)} GFLOP/s  (median ${r.median_ms!.toFixed(3)} ms of ${r.samples}, ±${r.rme_percent!.toFixed(1)}%)`;
}
