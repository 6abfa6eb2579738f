/**
 * npm run bench [-- --device cpu|cuda] [-- --quick] [-- --only PARTS] [-- --precision fp32|bf16] [-- --workers N]
 * (`npm run bench -- --help` lists the options; bench/args.ts parses them.)
 *
 * Kernel microbenchmarks (benchmark.js; bench/kernels.ts): GEMM at the model's shapes and 1024^3, in GFLOP/s; causal
 * attention (the training op and its backward) at the `small` preset's and the likelihood model's shapes; the data loader's
 * images/s; then whole steps: training images/s for the `small` and `tiny` MNIST presets at batch 256 and for the
 * shipped likelihood model's shape (`bpd`: patch 2, 196 tokens) at batch 64, both from fresh weights and from the
 * shipped model's trained ones (`bpd (mnist-bpd weights)`: a trained model's activations and gradients differ,
 * e.g. in their share of subnormal floats), and the time to draw 100 samples, from fresh weights and from the
 * shipped models (bench/steps.ts). A row that fails says so on its line, the others still run, and the exit status
 * is 1. With --only kv-cache, what a bf16 KV cache and bf16 products do to the shipped model's
 * samples (bench/kv-cache.ts; --count N samples, default 500). With --only profile, each op's share of a training
 * step (bench/profile.ts). Last, the GPU targets table (bench/targets.ts): by
 * default on CUDA, with --only targets anywhere.
 */
import Benchmark from 'benchmark';
import { getBackend, type Backend, type Precision } from '../lib/backend.js';
import { loadMnist, makeDataset } from '../lib/data.js';
import { TarflowError } from '../lib/errors.js';
import { BatchLoader } from '../lib/loader.js';
import { BENCH_USAGE, parseBenchArgs, runsPart, type BenchArgs, type BenchPart } from './args.js';
import { attentionCases, gemmCases, median, type KernelCases } from './kernels.js';
import { kvCacheAccuracy } from './kv-cache.js';
import { formatProfile, profileSteps } from './profile.js';
import { samplingRow, trainingRow, trainingRun } from './steps.js';
import { formatTargets, targetsTable } from './targets.js';

/** A refused option or device: one line and exit 2, as for any command-line mistake (no stack trace). */
function refuse(err: unknown): never {
  if (!(err instanceof TarflowError)) throw err;
  console.error(`tarflow bench: ${err.message}`);
  process.exit(2);
}

let args: BenchArgs;
try {
  args = parseBenchArgs(process.argv.slice(2));
} catch (err) {
  refuse(err);
}
if (args.help) {
  console.log(BENCH_USAGE);
  process.exit(0);
}
const { quick, workers } = args;
let backend: Backend;
try {
  backend = getBackend(args.device);
} catch (err) {
  refuse(err);
}
/** The device the backend resolved to (auto and TARFLOW_DEVICE settled once), for every model the benchmark makes. */
const device = backend.device;
/** --precision: the matrix products of the GEMM and training benchmarks (default fp32; the targets table's own default is bf16 on CUDA). */
const precision: Precision = args.precision ?? 'fp32';
const stepOptions = { backend, precision, workers };

/** Rows that failed; the exit status is 1 when there are any. */
let failures = 0;

/**
 * Runs one row: a library error (out of memory, a sample that overflows in every draw) is printed on its row's line
 * and the other rows still run; anything else is a bug and ends the run with its stack.
 */
async function row(name: string, measure: () => void | string | Promise<void | string>): Promise<void> {
  try {
    const line = await measure();
    if (typeof line === 'string') console.log(line);
  } catch (err) {
    if (!(err instanceof TarflowError)) throw err;
    failures++;
    console.log(`${name}: failed: ${err.code}: ${err.message}`);
  }
}

/** Times each case with benchmark.js (its own warm-up, then as many runs as fit in the time) and prints GFLOP/s. */
function kernelSuite(label: string, width: number, kernels: KernelCases): void {
  const suite = new Benchmark.Suite(label);
  const flops = new Map(kernels.cases.map((c) => [c.name, c.flops]));
  for (const c of kernels.cases) suite.add(c.name, c.run, { minSamples: 5, maxTime: quick ? 0.3 : 1.5 });
  try {
    suite
      .on('cycle', (e: Benchmark.Event) => {
        const b = e.target as unknown as Benchmark & { name: string; error?: unknown };
        if (b.error) {
          if (!(b.error instanceof TarflowError)) throw b.error;
          failures++;
          console.log(`${label} ${b.name}: failed: ${b.error.code}: ${b.error.message}`);
          return;
        }
        const gflops = (flops.get(b.name)! * b.hz) / 1e9;
        console.log(`${label} ${b.name.padEnd(width)} ${gflops.toFixed(1).padStart(7)} GFLOP/s  (${(1000 / b.hz).toFixed(3)} ms, ±${b.stats.rme.toFixed(1)}%)`);
      })
      .run({ async: false });
  } finally {
    kernels.dispose();
  }
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
if (runs('gemm')) await row('gemm', () => kernelSuite(`gemm ${precision}`, 38, gemmCases(backend, precision)));
if (runs('attention')) {
  await row('attention', () => {
    const cases = attentionCases(backend, precision);
    kernelSuite(`attention ${precision}${cases.fused ? ' fused' : ''}`, 34, cases);
  });
}
if (runs('loader')) await row('loader', loaderBench);
if (runs('train')) {
  await row('train small', () => trainingRow(stepOptions, 'small', 256, quick ? 2 : 5));
  await row('train tiny', () => trainingRow(stepOptions, 'tiny', 256, quick ? 2 : 5));
  await row('train bpd', () => trainingRow(stepOptions, 'bpd', 64, quick ? 2 : 7));
  await row('train bpd (mnist-bpd weights)', () => trainingRow(stepOptions, 'bpd', 64, quick ? 2 : 7, 'mnist-bpd'));
}
if (runs('sample')) {
  const repeats = quick ? 1 : 3;
  const rows: Array<[Parameters<typeof samplingRow>[1], number]> = [['small', 0], ['small', 2], ['tiny', 0], ['mnist-cond', 0], ['mnist-cond', 2], ['mnist-bpd', 0]];
  for (const [name, guidance] of rows) await row(`sample ${name}${guidance ? ' guided' : ''}`, () => samplingRow(backend, name, 100, guidance, repeats));
}
if (runs('profile')) {
  const cases: Array<[string, 'small' | 'bpd', number, string | undefined]> = [
    ['the likelihood model (mnist-bpd weights), batch 64', 'bpd', 64, 'mnist-bpd'],
    ['small preset, batch 256', 'small', 256, undefined],
  ];
  for (const [title, preset, batch, shipped] of cases) {
    await row(`profile ${title}`, async () => {
      const steps = quick ? 3 : 10;
      const { model, trainer } = await trainingRun(stepOptions, preset, batch, steps, shipped);
      try {
        return formatProfile(`profile: training step, ${title}, ${precision} on ${device}`, profileSteps(backend, () => trainer.trainStep(), steps));
      } finally {
        trainer.dispose();
        model.dispose();
      }
    });
  }
}
if (runs('kv-cache')) {
  await row('kv-cache', () => kvCacheAccuracy(device, args.count, (line) => console.log(`kv-cache: ${line}`)));
}
// The GPU targets table; on the CPU (slow, and its ImageNet 64 rows skipped) only when asked for.
if (runs('targets')) {
  await row('targets', async () => {
    const targetPrecision: Precision = args.precision ?? (backend.device === 'cuda' ? 'bf16' : 'fp32');
    const rows = await targetsTable(backend, { precision: targetPrecision, maxSeconds: quick ? 20 : 120, workers, log: (line) => console.log(`targets: ${line}`) });
    failures += rows.filter((r) => r.failed).length;
    return `\nGPU targets (${targetPrecision}; floor = the model's work over the matrix and copy rates measured above)\n${formatTargets(rows)}`;
  });
}
if (failures > 0) {
  console.error(`tarflow bench: ${failures} row${failures === 1 ? '' : 's'} failed (see "failed:" above)`);
  process.exitCode = 1;
}
