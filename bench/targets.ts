/**
 * The speed targets of the GPU work (issue 4) as one table: the official PyTorch TarFlow on the H200, the goal, this
 * project's measurement, and the floor each row is bound by, from the model's work (bench/cost.ts) over two rates
 * measured in the same run: the bf16 matrix rate (the GEMM row) and the device copy rate.
 *
 * Every timing waits for the device (backend.synchronize) and follows a warm-up run; the kernel, training and
 * denoising rows take the median of repeated runs (a sampling row, seconds to minutes long, one run), each on new
 * random inputs (drawn untimed before a kernel or denoising run; a training step takes the next batch). On the CPU the ImageNet 64 rows would take hours, so they are skipped there and the kernel
 * rows use smaller shapes; the table still shows what the code measures.
 */
import { type Backend, type Precision, type Tensor } from '../lib/backend.js';
import { PRESETS, type TarFlowConfig } from '../lib/config.js';
import { loadMnist, type ImageDataset } from '../lib/data.js';
import { TarFlow } from '../lib/model.js';
import { denoise, generate } from '../lib/sampling.js';
import { Trainer } from '../lib/train.js';
import { attentionBenchFlops, modelCost } from './cost.js';
import { median, randomTensor, tensorSet } from './kernels.js';
import type { TargetsReportRow } from './report.js';

/** The ImageNet 64 likelihood model of the paper's table: patch 2, width 768, 8 blocks of 8 layers. */
export const IMAGENET64: TarFlowConfig = {
  inChannels: 3, imgSize: 64, patchSize: 2, channels: 768, numBlocks: 8, layersPerBlock: 8, nvp: true, numClasses: 0, headDim: 64, expansion: 4,
};
const MNIST_SMALL: TarFlowConfig = { inChannels: 1, imgSize: 28, numClasses: 10, nvp: true, headDim: 64, expansion: 4, ...PRESETS.small };

/** What a row is measured against: the official figure and the goal, as the table prints them and as numbers where each is one figure in `unit`. */
export interface Target {
  work: string;
  official: string;
  goal: string;
  unit: string;
  officialValue?: number;
  goalValue?: number;
}

/** A measurement's cells, and the numbers they print. */
export interface Measurement {
  ours: string;
  /** The best this row could do at the measured rates, in the row's unit, and what bounds it. */
  floor: string;
  /** ours / floor for rates (1 = at the floor); empty where there is no floor. */
  gap: string;
  oursValue?: number;
  floorValue?: number;
  ofFloor?: number;
  /** The other figures `ours` prints, by name (the report's `more`). */
  more?: Record<string, number>;
}

export interface Row extends Target, Measurement {
  /** The measurement threw; `ours` and `floor` say what. */
  failed?: { code: string; message: string };
}

export interface TargetsOptions {
  precision: Precision;
  /** Largest seconds a sampling row may take; a longer one is measured on a smaller batch and says so. */
  maxSeconds: number;
  log: (line: string) => void;
  /** The training rows' data loader threads (--workers); undefined: the loader's default. */
  workers?: number;
}

/** Median seconds of `fn` over `repeats` runs after `warmup`; `prepare` (untimed) refreshes the inputs first. */
function timeMedian(backend: Backend, fn: () => void, repeats: number, warmup = 1, prepare?: () => void): number {
  const times: number[] = [];
  for (let i = 0; i < warmup + repeats; i++) {
    prepare?.();
    backend.synchronize();
    const t0 = performance.now();
    fn();
    backend.synchronize();
    if (i >= warmup) times.push((performance.now() - t0) / 1000);
  }
  return median(times);
}

function syntheticImages(config: TarFlowConfig, count: number): ImageDataset {
  const per = config.inChannels * config.imgSize * config.imgSize;
  const images = new Uint8Array(count * per);
  let s = 12345;
  for (let i = 0; i < images.length; i++) {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    images[i] = s >>> 24;
  }
  return { name: 'random', images, labels: null, count, channels: config.inChannels, size: config.imgSize, numClasses: 0 };
}

/**
 * Runs one measurement; a library error (out of memory, say) becomes the row's entry instead of ending the table.
 * Anything else is a bug in the benchmark and ends the run with its stack, as in the other parts.
 */
export function attempt(rows: Row[], target: Target, measure: () => Measurement): void {
  try {
    rows.push({ ...target, ...measure() });
  } catch (err) {
    const e = err as Error & { code?: unknown };
    if (typeof e?.code !== 'string' || !e.code.startsWith('ERR_TARFLOW_')) throw err;
    const code = e.code;
    rows.push({ ...target, ours: `failed: ${code}`, floor: e.message.slice(0, 120), gap: '', failed: { code, message: e.message } });
  }
}

/**
 * `decimals` decimals, or 3 significant digits where those would show fewer: two decimals made a CPU's 0.0234
 * TFLOP/s "0.02", and 0.0249 the same.
 */
export function figure(v: number, decimals: number): string {
  return v !== 0 && Math.abs(v) < 10 ** (2 - decimals) ? v.toPrecision(3) : v.toFixed(decimals);
}
const fmt = (v: number, unit: string, digits = 1) => (Number.isFinite(v) ? `${figure(v, digits)} ${unit}` : 'n/a');
const ratio = (ours: number, floor: number) => (Number.isFinite(ours) && Number.isFinite(floor) && floor > 0 ? `${((100 * ours) / floor).toFixed(0)}%` : '');

/** A rate and its floor, what bounds the floor, the cells printed with `digits` decimals. */
function rateAgainstFloor(ours: number, floor: number, unit: string, digits: number, bound: string, oursNote = ''): Measurement {
  return {
    ours: `${fmt(ours, unit, digits)}${oursNote}`, floor: `${fmt(floor, unit, digits)} (${bound})`, gap: ratio(ours, floor),
    oursValue: ours, floorValue: floor, ofFloor: ours / floor,
  };
}

/** The table's rows for `--json`: a cell that is one figure as its number, the others as their text. */
export function targetsReport(rows: Row[]): TargetsReportRow[] {
  return rows.map((r) => ({
    work: r.work,
    unit: r.unit,
    official: r.officialValue ?? r.official,
    goal: r.goalValue ?? r.goal,
    ours: r.oursValue ?? r.ours,
    // A failed row's floor cell holds its error, which `failed` gives.
    floor: r.floorValue ?? (r.floor === '' || r.failed ? null : r.floor),
    of_floor: r.ofFloor ?? null,
    ...(r.more ? { more: r.more } : {}),
    ...(r.failed ? { failed: r.failed } : {}),
  }));
}

/**
 * `measure` with the tensors it `keep`s freed afterwards, also when a later allocation fails: left alive (GBs at the
 * ImageNet 64 shapes), they would count in the peak memory row and starve the rows after.
 */
function withTensors<R>(measure: (keep: <T extends Tensor>(t: T) => T) => R): R {
  const set = tensorSet();
  try {
    return measure(set.keep);
  } finally {
    set.dispose();
  }
}

/** The copy rate in bytes/s (read + write) of one large device-to-device copy. */
function copyRate(backend: Backend, values: number): number {
  return withTensors((keep) => {
    const a = keep(randomTensor(backend, [values], 1)), b = keep(new backend.Tensor('float32', [values]));
    return (2 * 4 * values) / timeMedian(backend, () => backend.ops.copy(b, a), 5);
  });
}

export function gemmRate(backend: Backend, n: number, precision: Precision): number {
  return withTensors((keep) => {
    const x = keep(randomTensor(backend, [n, n], 1)), w = keep(randomTensor(backend, [n, n], 2)), y = keep(new backend.Tensor('float32', [n, n]));
    let seed = 10;
    return (2 * n ** 3) / timeMedian(backend, () => backend.ops.linear(y, x, w, null, false, { precision }), 5, 1, () => backend.ops.normal(x, seed++, 0, 0));
  });
}

// fused: flashAttention and its backward (saving lse [B,H,T]); otherwise attention (saving probs [B,H,T,T]).
function attentionRates(backend: Backend, B: number, H: number, T: number, d: number, precision: Precision, fused: boolean): { forward: number; forwardBackward: number } {
  const W = H * d;
  const flops = attentionBenchFlops(B, H, T, d);
  const mm = { precision };
  return withTensors((keep) => {
    const qkv = keep(randomTensor(backend, [B, T, 3 * W], 3)), out = keep(new backend.Tensor('float32', [B, T, W]));
    const saved = keep(new backend.Tensor('float32', fused ? [B, H, T] : [B, H, T, T]));
    const dout = keep(randomTensor(backend, [B, T, W], 4)), dqkv = keep(new backend.Tensor('float32', [B, T, 3 * W]));
    const forward = fused ? () => backend.ops.flashAttention(out, saved, qkv, H, 1, mm) : () => backend.ops.attention(out, saved, qkv, H, 1, mm);
    const backward = fused
      ? () => backend.ops.flashAttentionBackward(dqkv, dout, qkv, out, saved, H, 1, mm)
      : () => backend.ops.attentionBackward(dqkv, dout, qkv, saved, H, 1, mm);
    let seed = 10;
    const refresh = () => {
      backend.ops.normal(qkv, seed++, 0, 0);
      backend.ops.normal(dout, seed++, 0, 0);
    };
    const tf = timeMedian(backend, forward, 5, 1, refresh);
    const tfb = timeMedian(backend, () => {
      forward();
      backward();
    }, 5, 1, refresh);
    return { forward: flops.forward / tf, forwardBackward: flops.forwardBackward / tfb };
  });
}

/** Training images/s at batch B (median step) and the peak native (device) bytes of a step, workspace included. */
function trainRate(backend: Backend, config: TarFlowConfig, data: ImageDataset, B: number, steps: number, precision: Precision, workers: number | undefined, recompute = false) {
  const model = new TarFlow(config, { device: backend.device, seed: 0, precision, recompute });
  let trainer: Trainer;
  try {
    trainer = new Trainer(model, data, { batchSize: B, steps: steps + 2, seed: 0, noise: 'uniform' }, { workers });
  } catch (err) {
    model.dispose();
    throw err;
  }
  try {
    backend.ops.nativeMemory(true);
    trainer.trainStep(); // sizes the workspace
    const bytes = backend.ops.nativeMemory().peakBytes;
    const seconds = timeMedian(backend, () => trainer.trainStep(), steps, 0);
    return { imagesPerSecond: B / seconds, bytes };
  } finally {
    trainer.dispose();
    model.dispose();
  }
}

/**
 * Unguided exact sampling, images/s at `batch`: one run after one of the same size (the KV cache and workspace are
 * sized, on CUDA the sampler's graph captured, by the first). When a probe batch of 16 says the full batch would
 * take longer than maxSeconds, the probe's rate is reported with its batch size instead.
 */
export function samplingRate(model: TarFlow, batch: number, maxSeconds: number): { imagesPerSecond: number; batch: number } {
  let seed = 7;
  const run = (n: number) => timeMedian(model.backend, () => generate(model, { count: n, batchSize: n, seed: seed++ }), 1, 1);
  const probe = Math.min(16, batch);
  const tProbe = run(probe);
  if (probe === batch || tProbe * (batch / probe) > maxSeconds) return { imagesPerSecond: probe / tProbe, batch: probe };
  return { imagesPerSecond: batch / run(batch), batch };
}

function denoiseRate(model: TarFlow, batch: number): number {
  const per = model.config.inChannels * model.config.imgSize ** 2;
  const images = new Float32Array(batch * per);
  const refresh = () => {
    for (let i = 0; i < images.length; i++) images[i] = Math.random() * 2 - 1;
  };
  return batch / timeMedian(model.backend, () => denoise(model, images, null, { sigma: 0.05 }), 3, 1, refresh);
}

export async function targetsTable(backend: Backend, o: TargetsOptions): Promise<Row[]> {
  const gpu = backend.device === 'cuda';
  const rows: Row[] = [];
  const { precision } = o;
  const gemmN = gpu ? 8192 : 1024;
  o.log(`measuring the ${precision} matrix rate (GEMM ${gemmN}^3) and the copy rate`);
  const matrix = gemmRate(backend, gemmN, precision);
  const copy = copyRate(backend, gpu ? 1 << 28 : 1 << 24);
  o.log(`matrix ${fmt(matrix / 1e12, 'TFLOP/s', 2)}, copy ${fmt(copy / 1e9, 'GB/s')}`);
  const inet = modelCost(IMAGENET64);
  const mnist = modelCost(MNIST_SMALL);
  const onGpu = (target: Target, measure: () => Measurement) => {
    if (gpu) attempt(rows, target, measure);
    else rows.push({ ...target, ours: 'skipped on the CPU', floor: '', gap: '' });
  };
  // The sampler's KV cache follows the precision (bf16: 2 bytes per key or value read, fp32: 4); weights stay fp32
  // in memory and the batch shares their reads.
  const kvBytes = precision === 'bf16' ? 2 : 4;
  const samplingFloor = (cost: typeof inet, cfg: TarFlowConfig, batch: number) => {
    const tokenSteps = cfg.numBlocks * (cfg.imgSize / cfg.patchSize) ** 2;
    return copy / (kvBytes * cost.kvReadsPerImage + (4 * cost.weightsPerTokenStep * tokenSteps) / batch);
  };
  const imagesPerSecond = (work: string, official: string, goal: string, officialValue?: number, goalValue?: number): Target =>
    ({ work, official, goal, unit: 'img/s', officialValue, goalValue });

  let inetBytes = NaN;
  onGpu(imagesPerSecond('training, ImageNet 64 model (patch 2, width 768, 8x8, batch 32)', '79.5 img/s eager, 96.9 torch.compile', '>= 130 img/s', undefined, 130), () => {
    o.log('training the ImageNet 64 model, batch 32');
    const t = trainRate(backend, IMAGENET64, syntheticImages(IMAGENET64, 64), 32, 5, precision, o.workers);
    inetBytes = t.bytes;
    return rateAgainstFloor(t.imagesPerSecond, matrix / inet.trainFlops, 'img/s', 1, 'matrix rate');
  });
  // The memory goal with block recomputation (ModelOptions.recompute), at the speed it leaves; without it, the peak of
  // the row above.
  onGpu({ work: 'its peak device memory at batch 32', official: '61 GiB', goal: '<= 35 GiB', unit: 'GiB', officialValue: 61, goalValue: 35 }, () => {
    o.log('training the ImageNet 64 model, batch 32, with block recomputation');
    const t = trainRate(backend, IMAGENET64, syntheticImages(IMAGENET64, 64), 32, 3, precision, o.workers, true);
    const gib = t.bytes / 2 ** 30, withoutGib = inetBytes / 2 ** 30;
    return {
      ours: `${fmt(gib, 'GiB')} recomputing (${fmt(t.imagesPerSecond, 'img/s')}); ${fmt(withoutGib, 'GiB')} without`,
      floor: '', gap: '', oursValue: gib, more: { recomputing_img_per_s: t.imagesPerSecond, without_recomputing_gib: withoutGib },
    };
  });

  const mnistData = await loadMnist('train');
  attempt(rows, imagesPerSecond('training, MNIST small preset, batch 256', '6,000-8,000 img/s', '>= 25,000 img/s', undefined, 25_000), () => {
    o.log('training MNIST small, batch 256');
    const t = trainRate(backend, MNIST_SMALL, mnistData, 256, gpu ? 10 : 3, precision, o.workers);
    return rateAgainstFloor(t.imagesPerSecond, matrix / mnist.trainFlops, 'img/s', 0, 'matrix rate');
  });

  const withModel = <T>(config: TarFlowConfig, use: (m: TarFlow) => T): T => {
    const model = new TarFlow(config, { device: backend.device, seed: 0, precision });
    try {
      return use(model);
    } finally {
      model.dispose();
    }
  };
  // A sampling row's floor is that of the batch it measured, which maxSeconds may have made smaller than its title's.
  onGpu(imagesPerSecond('exact sequential sampling, ImageNet 64 model, batch 256', '0.57 img/s', '>= 30 img/s', 0.57, 30), () => withModel(IMAGENET64, (model) => {
    o.log('exact sampling, ImageNet 64 model');
    const s = samplingRate(model, 256, o.maxSeconds);
    const m = rateAgainstFloor(s.imagesPerSecond, samplingFloor(inet, IMAGENET64, s.batch), 'img/s', 2, 'KV cache reads', ` at batch ${s.batch}`);
    return { ...m, floor: `${fmt(m.floorValue!, 'img/s')} (KV cache reads)`, more: { batch: s.batch } };
  }));
  attempt(rows, imagesPerSecond('sampling, MNIST small, batch 1000, no guidance', '2,466 img/s', '>= 25,000 img/s', 2466, 25_000), () => withModel(MNIST_SMALL, (model) => {
    o.log('sampling MNIST small, batch 1000, no guidance');
    const s = samplingRate(model, 1000, o.maxSeconds);
    const m = rateAgainstFloor(s.imagesPerSecond, samplingFloor(mnist, MNIST_SMALL, s.batch), 'img/s', 0, 'KV cache and weight reads', ` at batch ${s.batch}`);
    return { ...m, more: { batch: s.batch } };
  }));
  onGpu(imagesPerSecond('denoising step, ImageNet 64 model, batch 16', '103 img/s', '>= 200 img/s', 103, 200), () => withModel(IMAGENET64, (model) => {
    o.log('denoising step, ImageNet 64 model, batch 16');
    return rateAgainstFloor(denoiseRate(model, 16), matrix / inet.denoiseFlops, 'img/s', 1, 'matrix rate');
  }));

  // bf16 on the GPU: the kernel that ran, and the mma.sync kernel beside it when that was wgmma (TARFLOW_CUDA_GEMM).
  let gemmOurs = fmt(matrix / 1e12, 'TFLOP/s', 2);
  const gemmMore: Record<string, number> = {};
  const kernel = gpu && precision === 'bf16' ? backend.bf16GemmKernel?.() : undefined;
  if (kernel) gemmOurs += ` (${kernel})`;
  if (kernel === 'wgmma') {
    const before = process.env.TARFLOW_CUDA_GEMM;
    process.env.TARFLOW_CUDA_GEMM = 'mma';
    try {
      gemmMore.mma_sync = gemmRate(backend, gemmN, precision) / 1e12;
      gemmOurs += `, mma.sync ${fmt(gemmMore.mma_sync, 'TFLOP/s', 2)}`;
    } finally {
      if (before === undefined) delete process.env.TARFLOW_CUDA_GEMM;
      else process.env.TARFLOW_CUDA_GEMM = before;
    }
  }
  rows.push({ work: `${precision} GEMM ${gemmN}^3`, official: '728 TFLOP/s (cuBLAS, 8192^3)', goal: '>= 620 TFLOP/s, own kernel', unit: 'TFLOP/s',
    officialValue: 728, goalValue: 620, ours: gemmOurs, floor: '', gap: '', oursValue: matrix / 1e12, ...(kernel === 'wgmma' ? { more: gemmMore } : {}) });

  const [aB, aH, aT, ad] = gpu ? [32, 12, 1024, 64] : [2, 12, 256, 64];
  const attentionTarget: Target = {
    work: `causal attention, batch ${aB}, ${aH} heads, ${aT} tokens, head ${ad}`, official: '253 TFLOP/s fwd, 211 fwd+bwd (FlashAttention-2)',
    goal: '>= 300 fwd, >= 250 fwd+bwd', unit: 'TFLOP/s',
  };
  attempt(rows, attentionTarget, () => {
    o.log(`causal attention, batch ${aB}, ${aH} heads, ${aT} tokens, head ${ad}`);
    // The fused ops are what the model trains with on CUDA, in bf16 there as FlashAttention-2's figures are (tensor-core
    // kernels); the unfused ones beside them for comparison.
    const attPrecision: Precision = gpu ? 'bf16' : precision;
    const att = attentionRates(backend, aB, aH, aT, ad, attPrecision, true);
    const plain = attentionRates(backend, aB, aH, aT, ad, attPrecision, false);
    return {
      ours: `fused ${attPrecision} ${fmt(att.forward / 1e12, 'fwd', 2)}, ${fmt(att.forwardBackward / 1e12, 'fwd+bwd TFLOP/s', 2)} `
        + `(unfused ${fmt(plain.forward / 1e12, 'fwd', 2)}, ${fmt(plain.forwardBackward / 1e12, 'fwd+bwd', 2)})`,
      floor: `${fmt(matrix / 1e12, 'TFLOP/s', 2)} (matrix rate)`, gap: `${ratio(att.forward, matrix)} / ${ratio(att.forwardBackward, matrix)}`,
      oursValue: att.forward / 1e12, floorValue: matrix / 1e12, ofFloor: att.forward / matrix,
      more: {
        forward_backward: att.forwardBackward / 1e12, of_floor_forward_backward: att.forwardBackward / matrix,
        unfused_forward: plain.forward / 1e12, unfused_forward_backward: plain.forwardBackward / 1e12,
      },
    };
  });
  return rows;
}

/** The rows as a Markdown table. */
export function formatTargets(rows: Row[]): string {
  const head = ['work', 'official PyTorch (H200)', 'goal', 'tarflow', 'floor', 'of floor'];
  const lines = [`| ${head.join(' | ')} |`, `|${head.map(() => '---').join('|')}|`];
  for (const r of rows) lines.push(`| ${[r.work, r.official, r.goal, r.ours, r.floor, r.gap].join(' | ')} |`);
  return lines.join('\n');
}
