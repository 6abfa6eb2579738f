/**
 * npm run bench [-- --device auto|cpu|cuda] [-- --quick] [-- --only PARTS] [-- --precision fp32|bf16] [-- --workers N]
 * [-- --count N] [-- --json]
 * (`npm run bench -- --help` lists the options; bench/args.ts parses them.)
 *
 * Kernel microbenchmarks (benchmark.js; bench/kernels.ts): GEMM at the model's shapes and 1024^3, in GFLOP/s; causal
 * attention (the training op and its backward) at the `small` preset's and the likelihood model's shapes; the data loader's
 * images/s; then whole steps: training images/s for the `small` and `tiny` MNIST presets at batch 256 and for the
 * shipped likelihood model's shape (`bpd`: patch 2, 196 tokens) at batch 64, both from fresh weights and from the
 * shipped model's trained ones (`bpd (mnist-bpd weights)`: a trained model's activations and gradients differ,
 * e.g. in their share of subnormal floats), and the time to draw 100 samples, from fresh weights and from the
 * shipped models (bench/steps.ts). A row that fails says so on its line, the others still run, and the exit status
 * is 1. With --only kv-cache, what a bf16 KV cache and bf16 products do to the shipped model's samples
 * (bench/kv-cache.ts; --count N samples, default 500, 100 with --quick). With --only profile, each op's share of a
 * training step (bench/profile.ts). Last, the GPU targets table (bench/targets.ts): by default on CUDA, with --only
 * targets anywhere. With --json, stdout is one JSON document at the end
 * (bench/report.ts: the rows the text lines are printed from), and the text goes to stderr.
 */
import Benchmark from 'benchmark';
import { cpus } from 'node:os';
import { getBackend, type Backend, type Precision } from '../lib/backend.js';
import { TarflowError } from '../lib/errors.js';
import { BENCH_USAGE, parseBenchArgs, runsPart, type BenchArgs, type BenchPart } from './args.js';
import { attentionCases, formatKernelRow, gemmCases, kernelRow, type KernelCases } from './kernels.js';
import { kvCacheAccuracy } from './kv-cache.js';
import { loaderBench } from './loader.js';
import { formatProfile, profileRows, profileSteps } from './profile.js';
import type { BenchReport, Measured } from './report.js';
import { samplingRow, trainingRow, trainingRun } from './steps.js';
import { formatTargets, targetsReport, targetsTable } from './targets.js';

/** A refused option or device: one line and exit 2, as for any command-line mistake (no stack trace). */
function refuse(err: unknown): never {
  if (!(err instanceof TarflowError)) throw err;
  console.error(`tarflow bench: ${err.message}`);
  process.exit(2);
}

const started = new Date();
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
// getBackend's CPU-fallback warning is emitted on a later tick, and the kernel rows run synchronously: without this
// wait it came after them, under the numbers it qualifies.
await new Promise((resolve) => setImmediate(resolve));
/** The device the backend resolved to (auto and TARFLOW_DEVICE settled once), for every model the benchmark makes. */
const device = backend.device;
/** --precision: the matrix products of the GEMM and training benchmarks (default fp32; the targets table's own default is bf16 on CUDA). */
const precision: Precision = args.precision ?? 'fp32';
const stepOptions = { backend, precision, workers };

const report: BenchReport = {
  device, threads: backend.ops.getThreads(), precision, quick, node: process.version, cpu: cpus()[0]?.model ?? 'unknown',
  started: started.toISOString(), rows: [], failed: [],
};
/** The text: on stdout, or with --json on stderr, where it still shows progress without breaking the document. */
const say: (line: string) => void = args.json ? (line) => console.error(line) : (line) => console.log(line);

/** A measurement: its rows into the report, its text printed. */
function record(m: Measured): void {
  report.rows.push(...m.rows);
  say(m.text);
}

/** A row that threw a library error: on its line, in the report's failed list, and counted for the exit status. */
function fail(part: BenchPart, name: string, label: string, err: TarflowError): void {
  report.failed.push({ part, name, code: err.code, message: err.message });
  say(`${label}: failed: ${err.code}: ${err.message}`);
}

/**
 * Runs one row (or a part that records its rows as it goes): a library error (out of memory, a sample that overflows
 * in every draw) is printed on its row's line and the other rows still run; anything else is a bug and ends the run
 * with its stack. `label` is the failure line's start, as the text has always printed it.
 */
async function row(part: BenchPart, name: string, measure: () => void | Measured | Promise<void | Measured>, label = part === name ? part : `${part} ${name}`): Promise<void> {
  try {
    const measured = await measure();
    if (measured) record(measured);
  } catch (err) {
    if (!(err instanceof TarflowError)) throw err;
    fail(part, name, label, err);
  }
}

/** Times each case with benchmark.js (its own warm-up, then as many runs as fit in the time) and records its GFLOP/s row as it finishes. */
function kernelSuite(part: 'gemm' | 'attention', label: string, width: number, kernels: KernelCases, fused?: boolean): void {
  const suite = new Benchmark.Suite(label);
  const cases = new Map(kernels.cases.map((c) => [c.name, c]));
  for (const c of kernels.cases) suite.add(c.name, c.run, { minSamples: 5, maxTime: quick ? 0.3 : 1.5 });
  try {
    suite
      .on('cycle', (e: Benchmark.Event) => {
        const b = e.target as unknown as Benchmark & { name: string; error?: unknown };
        const c = cases.get(b.name)!;
        if (b.error) {
          if (!(b.error instanceof TarflowError)) throw b.error;
          fail(part, c.name.replace(/\s+/g, ' '), `${label} ${b.name}`, b.error);
          return;
        }
        const r = kernelRow(part, precision, c, { sample: b.stats.sample, rme: b.stats.rme }, fused);
        record({ rows: [r], text: formatKernelRow(label, width, c, r) });
      })
      .run({ async: false });
  } finally {
    kernels.dispose();
  }
}

say(`tarflow bench on ${backend.device}, ${report.threads} threads${quick ? ' (quick)' : ''}`);
const runs = (part: BenchPart) => runsPart(args, part, backend.device);
if (runs('gemm')) await row('gemm', 'gemm', () => kernelSuite('gemm', `gemm ${precision}`, 38, gemmCases(backend, precision)));
if (runs('attention')) {
  await row('attention', 'attention', () => {
    const cases = attentionCases(backend, precision);
    kernelSuite('attention', `attention ${precision}${cases.fused ? ' fused' : ''}`, 34, cases, cases.fused);
  });
}
if (runs('loader')) await row('loader', 'loader', () => loaderBench(quick, workers, record));
if (runs('train')) {
  await row('train', 'small batch 256', () => trainingRow(stepOptions, 'small', 256, quick ? 2 : 5), 'train small');
  await row('train', 'tiny batch 256', () => trainingRow(stepOptions, 'tiny', 256, quick ? 2 : 5), 'train tiny');
  await row('train', 'bpd batch 64', () => trainingRow(stepOptions, 'bpd', 64, quick ? 2 : 7), 'train bpd');
  await row('train', 'bpd (mnist-bpd weights) batch 64', () => trainingRow(stepOptions, 'bpd', 64, quick ? 2 : 7, 'mnist-bpd'), 'train bpd (mnist-bpd weights)');
}
if (runs('sample')) {
  const repeats = quick ? 1 : 3;
  const rows: Array<[Parameters<typeof samplingRow>[1], number]> = [['small', 0], ['small', 2], ['tiny', 0], ['mnist-cond', 0], ['mnist-cond', 2], ['mnist-bpd', 0]];
  for (const [name, guidance] of rows) await row('sample', `${name}${guidance ? ' guided' : ''}`, () => samplingRow(backend, name, 100, guidance, repeats));
}
if (runs('profile')) {
  const cases: Array<[string, 'small' | 'bpd', number, string | undefined]> = [
    ['the likelihood model (mnist-bpd weights), batch 64', 'bpd', 64, 'mnist-bpd'],
    ['small preset, batch 256', 'small', 256, undefined],
  ];
  for (const [title, preset, batch, shipped] of cases) {
    await row('profile', title, async () => {
      const steps = quick ? 3 : 10;
      const { model, trainer } = await trainingRun(stepOptions, preset, batch, steps, shipped);
      try {
        const p = profileSteps(backend, () => trainer.trainStep(), steps);
        return { rows: profileRows(title, p, steps, precision), text: formatProfile(`profile: training step, ${title}, ${precision} on ${device}`, p) };
      } finally {
        trainer.dispose();
        model.dispose();
      }
    });
  }
}
if (runs('kv-cache')) {
  await row('kv-cache', 'kv-cache', () => kvCacheAccuracy(device, args.count, (line) => say(`kv-cache: ${line}`)));
}
// The GPU targets table; on the CPU (slow, and its ImageNet 64 rows skipped) only when asked for.
if (runs('targets')) {
  await row('targets', 'targets', async () => {
    const targetPrecision: Precision = args.precision ?? (backend.device === 'cuda' ? 'bf16' : 'fp32');
    const rows = await targetsTable(backend, { precision: targetPrecision, maxSeconds: quick ? 20 : 120, workers, log: (line) => say(`targets: ${line}`) });
    report.targets = targetsReport(rows);
    report.targets_precision = targetPrecision;
    // The table prints a failed row's error in its cells; the report lists it with the other failures too.
    for (const r of rows) if (r.failed) report.failed.push({ part: 'targets', name: r.work, ...r.failed });
    return { rows: [], text: `\nGPU targets (${targetPrecision}; floor = the model's work over the matrix and copy rates measured above)\n${formatTargets(rows)}` };
  });
}
const failures = report.failed.length;
if (failures > 0) {
  console.error(`tarflow bench: ${failures} row${failures === 1 ? '' : 's'} failed (see "failed:" above)`);
  process.exitCode = 1;
}
if (args.json) process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
