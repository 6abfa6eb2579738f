import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { formatLoaderRate, formatLoaderWaiting, loaderLabel } from '../bench/loader.js';
import type { BenchRow } from '../bench/report.js';

test('bench loader rows: one worker is "1 worker", any other count plural', () => {
  assert.is(loaderLabel('mnist-train', 256, 'flips', 1), 'loader mnist-train batch 256 (flips), 1 worker');
  assert.match(loaderLabel('mnist-train', 256, 'flips', 0), /, 0 workers$/);
  assert.match(loaderLabel('mnist-train', 256, 'flips', 2), /, 2 workers$/);
});

test('bench loader rows: the text lines print the rows\' numbers', () => {
  const common = { part: 'loader' as const, samples: 3, batch: 256, workers: 1 };
  const rate: BenchRow = { ...common, name: 'x', value: 106428.4, unit: 'images/s', goal: 100_000, goal_ratio: 1.064284 };
  assert.is(formatLoaderRate('L', rate), 'L: 106428 images/s to a waiting consumer (median of 3; goal 100,000: met, 1.1x)');
  assert.match(formatLoaderRate('L', { ...rate, value: 90_000, goal_ratio: 0.9 }), /goal 100,000: NOT met, 0\.9x\)$/);
  const waiting: BenchRow = { ...common, name: 'x, consumer sleeping', value: 3.94, unit: '% of the time waiting', busy_ms: 2.56 };
  assert.is(formatLoaderWaiting('L', 'sleeping', waiting), 'L: a consumer sleeping 2.6 ms per batch (the goal rate) waits 3.9% of the time (median of 3)');
});

test.run();
