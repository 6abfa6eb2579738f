/**
 * npm run bench [-- --device cpu|cuda] [-- --quick] [-- --only PARTS] [-- --precision fp32|bf16] [-- --workers N]
 * (`npm run bench -- --help` lists the options; bench/args.ts parses them.)
 *
 * Kernel microbenchmarks (benchmark.js): GEMM at the model's shapes and 1024^3, in GFLOP/s; causal attention
 * (the training op and its backward) at the `small` preset's and the likelihood model's shapes; the data loader's
 * images/s; then whole steps: training images/s for the `small` and `tiny` MNIST presets at batch 256 and for the
 * shipped likelihood model's shape (`bpd`: patch 2, 196 tokens) at batch 64, both from fresh weights and from the
 * shipped model's trained ones (`bpd (mnist-bpd weights)`: a trained model's activations and gradients differ,
 * e.g. in their share of subnormal floats), and the time to draw 100 unguided samples, from fresh weights and from
 * the shipped models. With --only kv-cache, what a bf16 KV cache and bf16 products do to the shipped model's
 * samples (bench/kv-cache.ts; --count N samples, default 500). With --only profile, each op's share of a training
 * step (bench/profile.ts). Last, the GPU targets table (bench/targets.ts): by
 * default on CUDA, with --only targets anywhere.
 */
import Benchmark from 'benchmark';
import { getBackend, type Backend, type Precision } from '../lib/backend.js';
import { loadModel } from '../lib/checkpoint.js';
import { PRESETS } from '../lib/config.js';
import { loadMnist, makeDataset } from '../lib/data.js';
import { TarflowError } from '../lib/errors.js';
import { BatchLoader } from '../lib/loader.js';
import { TarFlow } from '../lib/model.js';
import { pretrainedPath } from '../lib/pretrained.js';
import { generate } from '../lib/sampling.js';
import { Trainer } from '../lib/train.js';
import { BENCH_USAGE, parseBenchArgs, runsPart, type BenchArgs, type BenchPart } from './args.js';
import { kvCacheAccuracy } from './kv-cache.js';
import { formatProfile, profileSteps } from './profile.js';
import { formatTargets, targetsTable } from './targets.js';
// Shared with the tests (it imports nothing of the test runner).
import { withEnv } from '../test/helpers.js';

let args: BenchArgs;
try {
  args = parseBenchArgs(process.argv.slice(2));
} catch (err) {
  if (!(err instanceof TarflowError)) throw err;
  console.error(`tarflow bench: ${err.message}`);
  process.exit(2);
}
if (args.help) {
  console.log(BENCH_USAGE);
  process.exit(0);
}
const { quick, workers } = args;
const backend = getBackend(args.device);
/** The device the backend resolved to (auto and TARFLOW_DEVICE settled once), for every model the benchmark makes. */
const device = backend.device;
/** --precision: the matrix products of the GEMM and training benchmarks (default fp32; the targets table's own default is bf16 on CUDA). */
const precision: Precision = args.precision ?? 'fp32';

function rand(b: Backend, shape: number[], seed: number) {
  const t = new b.Tensor('float32', shape);
  b.ops.normal(t, seed, 0, 0);
  return t;
}

function gemmSuite(): Promise<void> {
  const M = 256 * 49;
  const shapes: Array<[string, number, number, number]> = [
    ['1024^3', 1024, 1024, 1024],
    ['qkv   M=12544 N=384 K=128', M, 384, 128],
    ['proj  M=12544 N=128 K=128', M, 128, 128],
    ['fc1   M=12544 N=512 K=128', M, 512, 128],
    ['fc2   M=12544 N=128 K=512', M, 128, 512],
    ['decode M=100 N=512 K=128', 100, 512, 128],
  ];
  const suite = new Benchmark.Suite('gemm');
  const flops = new Map<string, number>();
  // bf16 on the CPU: each shape on the kernel auto picks (AMX where the CPU has it) and on the reference beside it.
  const kernels = precision === 'bf16' && backend.device === 'cpu' ? [...new Set([backend.bf16GemmKernel!(), 'reference'])] : [undefined];
  for (const [shape, m, n, k] of shapes) {
    const x = rand(backend, [m, k], 1), w = rand(backend, [n, k], 2), y = new backend.Tensor('float32', [m, n]);
    for (const kernel of kernels) {
      const name = kernel ? `${shape} ${kernel}` : shape;
      flops.set(name, 2 * m * n * k);
      const product = () => backend.ops.linear(y, x, w, null, false, { precision });
      const run = kernel ? () => withEnv('TARFLOW_CPU_GEMM', kernel, product) : product;
      suite.add(name, run, { minSamples: 5, maxTime: quick ? 0.3 : 1.5 });
    }
  }
  return new Promise((resolve) => {
    suite
      .on('cycle', (e: Benchmark.Event) => {
        const b = e.target as unknown as Benchmark & { name: string };
        const gflops = (flops.get(b.name)! * b.hz) / 1e9;
        console.log(`gemm ${precision} ${b.name.padEnd(38)} ${gflops.toFixed(1).padStart(7)} GFLOP/s  (${(1000 / b.hz).toFixed(3)} ms, ±${b.stats.rme.toFixed(1)}%)`);
      })
      .on('complete', () => resolve())
      .run({ async: false });
  });
}

/**
 * The training form of causal attention (attention / attentionBackward, or the fused pair when the device trains
 * with it) at the shapes the CPU trains: the `small` preset (49 tokens, batch 256) and the likelihood model (196
 * tokens, batch 64), 2 heads of 64. GFLOP/s count the causal half: 2 T^2 hd per (sample, head) forward (QK^T and PV),
 * twice that backward.
 */
function attentionSuite(): Promise<void> {
  const shapes: Array<[string, number, number]> = [['small B=256 T=49', 256, 49], ['bpd   B=64 T=196', 64, 196]];
  const W = 128, H = 2, hd = W / H;
  const fused = backend.device === 'cuda';
  const suite = new Benchmark.Suite('attention');
  const flops = new Map<string, number>();
  const mm = { precision };
  for (const [shape, B, T] of shapes) {
    const qkv = rand(backend, [B, T, 3 * W], 1), dout = rand(backend, [B, T, W], 2);
    const out = new backend.Tensor('float32', [B, T, W]), dqkv = new backend.Tensor('float32', [B, T, 3 * W]);
    const saved = new backend.Tensor('float32', fused ? [B, H, T] : [B, H, T, T]);
    const forward = () => fused ? backend.ops.flashAttention(out, saved, qkv, H, 1, mm) : backend.ops.attention(out, saved, qkv, H, 1, mm);
    const backward = () => fused ? backend.ops.flashAttentionBackward(dqkv, dout, qkv, out, saved, H, 1, mm) : backend.ops.attentionBackward(dqkv, dout, qkv, saved, H, 1, mm);
    const causal = 2 * B * H * T * T * hd;
    flops.set(`${shape} forward`, causal);
    flops.set(`${shape} forward+backward`, 3 * causal);
    suite.add(`${shape} forward`, () => { forward(); backend.synchronize(); }, { minSamples: 5, maxTime: quick ? 0.3 : 1.5 });
    suite.add(`${shape} forward+backward`, () => { forward(); backward(); backend.synchronize(); }, { minSamples: 5, maxTime: quick ? 0.3 : 1.5 });
  }
  return new Promise((resolve) => {
    suite
      .on('cycle', (e: Benchmark.Event) => {
        const b = e.target as unknown as Benchmark & { name: string };
        const gflops = (flops.get(b.name)! * b.hz) / 1e9;
        console.log(`attention ${precision}${fused ? ' fused' : ''} ${b.name.padEnd(34)} ${gflops.toFixed(1).padStart(7)} GFLOP/s  (${(1000 / b.hz).toFixed(3)} ms, ±${b.stats.rme.toFixed(1)}%)`);
      })
      .on('complete', () => resolve())
      .run({ async: false });
  });
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

/** The shipped likelihood model's shape (models/mnist-bpd): patch 2, so 196 tokens, trained at batch 64. */
const BPD_SHAPE = { patchSize: 2, channels: 128, numBlocks: 4, layersPerBlock: 2, numClasses: 0 };

/** A model and its trainer at a benchmark's shape, fresh weights or a shipped model's, after one step (the workspace). */
async function trainingRun(preset: keyof typeof PRESETS | 'bpd', batch: number, steps: number, shipped?: string): Promise<{ model: TarFlow; trainer: Trainer }> {
  const data = await loadMnist('train');
  const shape = preset === 'bpd' ? BPD_SHAPE : { numClasses: 10, ...PRESETS[preset] };
  const model = shipped !== undefined ? await loadModel(pretrainedPath(shipped), { device, precision })
    : new TarFlow({ inChannels: 1, imgSize: 28, ...shape }, { device, seed: 0, precision });
  // Continuing from trained weights, the schedule the shipped model's later runs used (the default's 2e-3 reached in
  // two warm-up steps would soon make them untrained ones).
  const schedule = shipped !== undefined ? { steps: 5000, lr: 3e-4, warmupSteps: 100 } : { steps: steps + 2 };
  const trainer = new Trainer(model, data, { batchSize: batch, seed: 0, ...schedule, ...(preset === 'bpd' ? { noise: 'uniform' as const } : {}) });
  trainer.trainStep(); // allocates the workspace
  return { model, trainer };
}

async function trainingBench(preset: keyof typeof PRESETS | 'bpd', batch: number, steps: number, shipped?: string): Promise<void> {
  const { model, trainer } = await trainingRun(preset, batch, steps, shipped);
  const times: number[] = [];
  for (let i = 0; i < steps; i++) {
    const t0 = performance.now();
    trainer.trainStep();
    times.push(performance.now() - t0);
  }
  const ms = median(times);
  // Matrix work dominates: 2 (forward) + 4 (backward) flops per weight per token.
  const gflopPerImage = (model.parameterCount * 6) / 1e9;
  const perImage = gflopPerImage * model.shape.tokens;
  const kernel = precision === 'bf16' ? ` (${backend.bf16GemmKernel?.() ?? 'bf16'})` : '';
  console.log(`train ${preset}${shipped !== undefined ? ` (${shipped} weights)` : ''} batch ${batch} ${precision}${kernel}: ${(batch / (ms / 1000)).toFixed(1)} images/s (median step ${ms.toFixed(0)} ms of ${steps}; ${(perImage * batch / (ms / 1000)).toFixed(0)} GFLOP/s effective, counting 6 flops per weight per token)`);
  trainer.dispose();
  model.dispose();
}

/** `name`: a preset (fresh weights) or a shipped model (`mnist-cond`, `mnist-bpd`). */
async function samplingBench(name: keyof typeof PRESETS | 'mnist-cond' | 'mnist-bpd', count: number, guidance: number): Promise<void> {
  const model = name === 'mnist-cond' || name === 'mnist-bpd' ? await loadModel(pretrainedPath(name), { device })
    : new TarFlow({ inChannels: 1, imgSize: 28, numClasses: 10, ...PRESETS[name] }, { device, seed: 0 });
  generate(model, { count: 8, seed: 0 });
  const times: number[] = [];
  for (let r = 0; r < (quick ? 1 : 3); r++) {
    const t0 = performance.now();
    generate(model, { count, seed: r, guidance, batchSize: count });
    times.push(performance.now() - t0);
  }
  const ms = median(times);
  console.log(`sample ${name} ${count} images${guidance ? ` guided (w=${guidance})` : ' unguided'}: ${(ms / 1000).toFixed(3)} s (${(count / (ms / 1000)).toFixed(0)} images/s)`);
  model.dispose();
}

/**
 * The training data loader (shuffle, scaling, noise, label drop, flips, prepared on worker threads): images/s
 * delivered to a consumer that takes each batch as soon as it has one, and the share of its time a consumer that
 * is busy between batches for as long as the goal rate allows (a trainer running exactly at the goal) spends
 * waiting for the next one: busy sleeping (a GPU trainer's host thread) or busy computing (a CPU trainer).
 * Goals (issue 5): 100,000 MNIST images/s, and 10 times the ImageNet 64 model's training rate, 1,300 images/s
 * of 64x64x3 (a synthetic dataset of that shape with the ImageNet 64 augmentation).
 */
async function loaderBench(): Promise<void> {
  const mnist = await loadMnist('train');
  const count = 8192;
  const rgb = makeDataset('synthetic 64x64x3', Uint8Array.from({ length: count * 3 * 64 * 64 }, (_, i) => (i * 2654435761) >>> 24),
    count, 3, 64, Int32Array.from({ length: count }, (_, i) => i % 1000));
  const cases = [
    { data: mnist, goal: 100_000, augment: 'Gaussian noise 0.1, label drop 0.1', options: { sigma: 0.1, labelDrop: 0.1, hflip: false }, batches: quick ? 50 : 200 },
    { data: rgb, goal: 1_300, augment: 'Gaussian noise 0.05, flips, label drop 0.1', options: { sigma: 0.05, labelDrop: 0.1, hflip: true }, batches: quick ? 8 : 30 },
  ];
  const rounds = quick ? 3 : 5;
  const batchSize = 256;
  const pause = new Int32Array(new SharedArrayBuffer(4));
  const consumers: Array<[string, (ms: number) => void]> = [
    ['sleeping', (ms) => Atomics.wait(pause, 0, 0, ms)],
    ['computing', (ms) => { for (const t0 = performance.now(); performance.now() - t0 < ms;); }],
  ];
  for (const { data, goal, augment, options, batches } of cases) {
    const loader = new BatchLoader(data, { batchSize, seed: 0, noise: 'gaussian', ...options, workers });
    let step = 0;
    // the first batches include starting the threads
    for (let i = 0; i < 4; i++) loader.batch(step++);
    /** Takes `batches` batches, busy for `busy` between them; returns images/s and the share of the time spent waiting. */
    const run = (busy?: (ms: number) => void) => {
      let waited = 0;
      const t0 = performance.now();
      for (let i = 0; i < batches; i++) {
        const w0 = performance.now();
        loader.batch(step++);
        waited += performance.now() - w0;
        busy?.((1000 * batchSize) / goal);
      }
      const ms = performance.now() - t0;
      return { rate: (batches * batchSize) / (ms / 1000), waiting: waited / ms };
    };
    const name = `loader ${data.name} batch ${batchSize} (${augment}), ${loader.workers} workers`;
    const rate = median(Array.from({ length: rounds }, () => run().rate));
    console.log(`${name}: ${rate.toFixed(0)} images/s to a waiting consumer (median of ${rounds}; goal ${goal.toLocaleString('en-US')}: ${rate >= goal ? 'met' : 'NOT met'}, ${(rate / goal).toFixed(1)}x)`);
    for (const [kind, busy] of consumers) {
      const waiting = median(Array.from({ length: rounds }, () => run(busy).waiting));
      console.log(`${name}: a consumer ${kind} ${((1000 * batchSize) / goal).toFixed(1)} ms per batch (the goal rate) waits ${(100 * waiting).toFixed(1)}% of the time (median of ${rounds})`);
    }
    loader.dispose();
  }
}

console.log(`tarflow bench on ${backend.device}, ${backend.ops.getThreads()} threads${quick ? ' (quick)' : ''}`);
const runs = (part: BenchPart) => runsPart(args, part, backend.device);
if (runs('gemm')) await gemmSuite();
if (runs('attention')) await attentionSuite();
if (runs('loader')) await loaderBench();
if (runs('train')) {
  await trainingBench('small', 256, quick ? 2 : 5);
  await trainingBench('tiny', 256, quick ? 2 : 5);
  await trainingBench('bpd', 64, quick ? 2 : 7);
  await trainingBench('bpd', 64, quick ? 2 : 7, 'mnist-bpd');
}
if (runs('sample')) {
  await samplingBench('small', 100, 0);
  await samplingBench('small', 100, 2);
  await samplingBench('tiny', 100, 0);
  await samplingBench('mnist-cond', 100, 0);
  await samplingBench('mnist-cond', 100, 2);
  await samplingBench('mnist-bpd', 100, 0);
}
if (runs('profile')) {
  const cases: Array<[string, keyof typeof PRESETS | 'bpd', number, string | undefined]> = [
    ['the likelihood model (mnist-bpd weights), batch 64', 'bpd', 64, 'mnist-bpd'],
    ['small preset, batch 256', 'small', 256, undefined],
  ];
  for (const [title, preset, batch, shipped] of cases) {
    const steps = quick ? 3 : 10;
    const { model, trainer } = await trainingRun(preset, batch, steps, shipped);
    console.log(formatProfile(`profile: training step, ${title}, ${precision} on ${device}`, profileSteps(backend, () => trainer.trainStep(), steps)));
    trainer.dispose();
    model.dispose();
  }
}
if (runs('kv-cache')) {
  console.log(await kvCacheAccuracy(device, args.count, (line) => console.log(`kv-cache: ${line}`)));
}
// The GPU targets table; on the CPU (slow, and its ImageNet 64 rows skipped) only when asked for.
if (runs('targets')) {
  const targetPrecision: Precision = args.precision ?? (backend.device === 'cuda' ? 'bf16' : 'fp32');
  const rows = await targetsTable(backend, { precision: targetPrecision, maxSeconds: quick ? 20 : 120, log: (line) => console.log(`targets: ${line}`) });
  console.log(`\nGPU targets (${targetPrecision}; floor = the model's work over the matrix and copy rates measured above)\n${formatTargets(rows)}`);
}
