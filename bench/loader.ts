/**
 * The training data loader's rows of `npm run bench` (--only loader): shuffle, scaling, noise, label drop, flips,
 * prepared on worker threads. For each dataset: images/s delivered to a consumer that takes each batch as soon as it
 * has one, and the share of its time a consumer that is busy between batches for as long as the goal rate allows (a
 * trainer running exactly at the goal) spends waiting for the next one: busy sleeping (a GPU trainer's host thread)
 * or busy computing (a CPU trainer).
 * Goals (issue 5): 100,000 MNIST images/s, and 10 times the ImageNet 64 model's training rate, 1,300 images/s
 * of 64x64x3 (a synthetic dataset of that shape with the ImageNet 64 augmentation).
 */
import { loadMnist, makeDataset } from '../lib/data.js';
import { BatchLoader } from '../lib/loader.js';
import { median } from './kernels.js';
import type { BenchRow, Measured } from './report.js';

/** The text lines' common start: what is loaded, how, and on how many threads. */
export function loaderLabel(dataName: string, batch: number, augment: string, workers: number): string {
  return `loader ${dataName} batch ${batch} (${augment}), ${workers} worker${workers === 1 ? '' : 's'}`;
}

/** The rate row's line. */
export function formatLoaderRate(label: string, r: BenchRow): string {
  const goal = r.goal!;
  return `${label}: ${r.value.toFixed(0)} images/s to a waiting consumer (median of ${r.samples}; goal ${goal.toLocaleString('en-US')}: ${r.value >= goal ? 'met' : 'NOT met'}, ${r.goal_ratio!.toFixed(1)}x)`;
}

/** A consumer row's line; `kind`: sleeping or computing. */
export function formatLoaderWaiting(label: string, kind: string, r: BenchRow): string {
  return `${label}: a consumer ${kind} ${r.busy_ms!.toFixed(1)} ms per batch (the goal rate) waits ${r.value.toFixed(1)}% of the time (median of ${r.samples})`;
}

/** Runs the loader rows, handing each to `emit` as soon as it is measured. */
export async function loaderBench(quick: boolean, workers: number | undefined, emit: (m: Measured) => void): Promise<void> {
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
    try {
      let step = 0;
      // the first batches include starting the threads
      for (let i = 0; i < 4; i++) loader.batch(step++);
      const busyMs = (1000 * batchSize) / goal;
      /** Takes `batches` batches, busy for `busyMs` between them; returns images/s and the share of the time spent waiting. */
      const run = (busy?: (ms: number) => void) => {
        let waited = 0;
        const t0 = performance.now();
        for (let i = 0; i < batches; i++) {
          const w0 = performance.now();
          loader.batch(step++);
          waited += performance.now() - w0;
          busy?.(busyMs);
        }
        const ms = performance.now() - t0;
        return { rate: (batches * batchSize) / (ms / 1000), waiting: waited / ms };
      };
      const label = loaderLabel(data.name, batchSize, augment, loader.workers);
      const name = `${data.name} batch ${batchSize} (${augment})`;
      const common = { samples: rounds, batch: batchSize, workers: loader.workers };
      const rate = median(Array.from({ length: rounds }, () => run().rate));
      const rateRow: BenchRow = { part: 'loader', name, value: rate, unit: 'images/s', ...common, goal, goal_ratio: rate / goal };
      emit({ rows: [rateRow], text: formatLoaderRate(label, rateRow) });
      for (const [kind, busy] of consumers) {
        const waiting = median(Array.from({ length: rounds }, () => run(busy).waiting));
        const row: BenchRow = { part: 'loader', name: `${name}, consumer ${kind}`, value: 100 * waiting, unit: '% of the time waiting', ...common, busy_ms: busyMs };
        emit({ rows: [row], text: formatLoaderWaiting(label, kind, row) });
      }
    } finally {
      loader.dispose();
    }
  }
}
