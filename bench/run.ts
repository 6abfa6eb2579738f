/**
 * npm run bench [-- --device cpu|cuda] [-- --quick]
 *
 * Kernel microbenchmarks (benchmark.js): GEMM at the model's shapes and 1024^3, in GFLOP/s; then whole steps:
 * training images/s for the `small` MNIST preset at batch 256, and the time to draw 100 unguided samples.
 */
import Benchmark from 'benchmark';
import { parseArgs } from 'node:util';
import { getBackend, type Backend, type DeviceOption } from '../lib/backend.js';
import { PRESETS } from '../lib/config.js';
import { loadMnist } from '../lib/data.js';
import { TarFlow } from '../lib/model.js';
import { generate } from '../lib/sampling.js';
import { Trainer } from '../lib/train.js';

const { values } = parseArgs({ options: { device: { type: 'string' }, quick: { type: 'boolean' }, only: { type: 'string' } } });
const device = (values.device ?? 'auto') as DeviceOption;
const quick = values.quick === true;
const backend = getBackend(device);

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
  for (const [name, m, n, k] of shapes) {
    const x = rand(backend, [m, k], 1), w = rand(backend, [n, k], 2), y = new backend.Tensor('float32', [m, n]);
    flops.set(name, 2 * m * n * k);
    suite.add(name, () => backend.ops.linear(y, x, w, null, false), { minSamples: 5, maxTime: quick ? 0.3 : 1.5 });
  }
  return new Promise((resolve) => {
    suite
      .on('cycle', (e: Benchmark.Event) => {
        const b = e.target as unknown as Benchmark & { name: string };
        const gflops = (flops.get(b.name)! * b.hz) / 1e9;
        console.log(`gemm ${b.name.padEnd(28)} ${gflops.toFixed(1).padStart(7)} GFLOP/s  (${(1000 / b.hz).toFixed(3)} ms, ±${b.stats.rme.toFixed(1)}%)`);
      })
      .on('complete', () => resolve())
      .run({ async: false });
  });
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

async function trainingBench(preset: keyof typeof PRESETS, batch: number, steps: number): Promise<void> {
  const data = await loadMnist('train');
  const model = new TarFlow({ inChannels: 1, imgSize: 28, numClasses: 10, ...PRESETS[preset] }, { device, seed: 0 });
  const trainer = new Trainer(model, data, { batchSize: batch, steps: steps + 2, seed: 0 });
  trainer.trainStep(); // allocates the workspace
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
  console.log(`train ${preset} batch ${batch}: ${(batch / (ms / 1000)).toFixed(1)} images/s (median step ${ms.toFixed(0)} ms of ${steps}; ${(perImage * batch / (ms / 1000)).toFixed(0)} GFLOP/s effective, counting 6 flops per weight per token)`);
  trainer.dispose();
  model.dispose();
}

function samplingBench(preset: keyof typeof PRESETS, count: number, guidance: number): void {
  const model = new TarFlow({ inChannels: 1, imgSize: 28, numClasses: 10, ...PRESETS[preset] }, { device, seed: 0 });
  generate(model, { count: 8, seed: 0 });
  const times: number[] = [];
  for (let r = 0; r < (quick ? 1 : 3); r++) {
    const t0 = performance.now();
    generate(model, { count, seed: r, guidance, batchSize: count });
    times.push(performance.now() - t0);
  }
  const ms = median(times);
  console.log(`sample ${preset} ${count} images${guidance ? ` guided (w=${guidance})` : ' unguided'}: ${(ms / 1000).toFixed(3)} s (${(count / (ms / 1000)).toFixed(0)} images/s)`);
  model.dispose();
}

/** Batch preparation (shuffle, scaling, noise augmentation, label drop) as the trainer does it, per image. */
async function loaderBench(): Promise<void> {
  const data = await loadMnist('train');
  const model = new TarFlow({ inChannels: 1, imgSize: 28, numClasses: 10, patchSize: 4, channels: 64, numBlocks: 1, layersPerBlock: 1 }, { device, seed: 0 });
  const trainer = new Trainer(model, data, { batchSize: 256, epochs: 2, seed: 0 });
  const prepare = (trainer as unknown as { prepareBatch(ws: unknown, s: number): void }).prepareBatch.bind(trainer);
  const ws = model.workspace(256);
  for (let s = 0; s < 5; s++) prepare(ws, s);
  const steps = quick ? 50 : 200;
  const t0 = performance.now();
  for (let s = 0; s < steps; s++) prepare(ws, s);
  const seconds = (performance.now() - t0) / 1000;
  console.log(`loader mnist batch 256 (shuffle, scale, Gaussian noise, label drop): ${((steps * 256) / seconds).toFixed(0)} images/s`);
  trainer.dispose();
  model.dispose();
}

console.log(`tarflow bench on ${backend.device}, ${backend.ops.getThreads()} threads${quick ? ' (quick)' : ''}`);
const only = values.only;
if (!only || only === 'gemm') await gemmSuite();
if (!only || only === 'loader') await loaderBench();
if (!only || only === 'train') {
  await trainingBench('small', 256, quick ? 2 : 5);
  await trainingBench('tiny', 256, quick ? 2 : 5);
}
if (!only || only === 'sample') {
  samplingBench('small', 100, 0);
  samplingBench('small', 100, 2);
  samplingBench('tiny', 100, 0);
}
