import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { profileSteps } from '../bench/profile.js';
import { attempt, figure, gemmRate, samplingRate, targetsReport, type Row } from '../bench/targets.js';
import { getBackend, type Backend } from '../lib/backend.js';
import { TarFlow } from '../lib/model.js';

const cpu = getBackend('cpu');

test('targets GEMM rate: fresh random inputs before each timed product, drawn outside the timing', () => {
  const events: string[] = [];
  const ops = { ...cpu.ops };
  for (const name of ['linear', 'normal'] as const) {
    const fn = cpu.ops[name] as (...a: unknown[]) => void;
    (ops as Record<string, unknown>)[name] = (...args: unknown[]) => {
      events.push(name);
      return fn(...args);
    };
  }
  const backend: Backend = { device: 'cpu', Tensor: cpu.Tensor, ops, synchronize: () => events.push('synchronize') };
  assert.ok(gemmRate(backend, 64, 'fp32') > 0);
  // two draws make x and w; then warm-up and 5 timed runs, each: new x, wait, product, wait
  assert.equal(events, ['normal', 'normal', ...Array.from({ length: 6 }, () => ['normal', 'synchronize', 'linear', 'synchronize']).flat()]);
});

test('targets sampling rate: the reported run follows one of the same batch size, the probe\'s too', () => {
  const model = new TarFlow({ inChannels: 1, imgSize: 8, patchSize: 4, channels: 32, headDim: 16, numBlocks: 2, layersPerBlock: 1, numClasses: 0 }, { device: 'cpu', seed: 0 });
  try {
    // Each generate draws its latents with one normal() per batch.
    const draws = (batch: number, maxSeconds: number) => {
      let r: ReturnType<typeof samplingRate>;
      const p = profileSteps(cpu, () => { r = samplingRate(model, batch, maxSeconds); }, 1);
      return { draws: p.ops.find((o) => o.op === 'normal')?.callsPerStep, batch: r!.batch };
    };
    assert.equal(draws(16, 100), { draws: 2, batch: 16 }, 'the probe is the batch: warm-up and timed');
    assert.equal(draws(32, 100), { draws: 4, batch: 32 }, 'probe (2), then the full batch (2)');
    assert.equal(draws(64, 0), { draws: 2, batch: 16 }, 'too slow for the full batch: the probe\'s rate, warmed up');
  } finally {
    model.dispose();
  }
});

test('targets rows: a measurement that throws becomes a row marked failed (the bench then exits 1)', () => {
  const rows: Row[] = [];
  const target = { work: 'work', official: 'official', goal: 'goal', unit: 'img/s' };
  attempt(rows, target, () => ({ ours: '1 img/s', floor: '', gap: '' }));
  attempt(rows, { ...target, work: 'broken' }, () => {
    throw Object.assign(new Error('no memory'), { code: 'ERR_TARFLOW_OUT_OF_MEMORY' });
  });
  assert.is(rows[0].failed, undefined);
  assert.equal(rows[1].failed, { code: 'ERR_TARFLOW_OUT_OF_MEMORY', message: 'no memory' });
  assert.is(rows[1].ours, 'failed: ERR_TARFLOW_OUT_OF_MEMORY');
  // A bug in the benchmark is not a measurement that failed: it ends the run with its stack, as in the other parts.
  assert.throws(() => attempt(rows, { ...target, work: 'bug' }, () => (undefined as unknown as { x: number }).x as never), TypeError);
  assert.is(rows.length, 2);
});

test('targets figures: small values keep three significant digits (two decimals made 0.0234 TFLOP/s "0.02")', () => {
  assert.is(figure(0.0234, 2), '0.0234');
  assert.is(figure(0.18, 2), '0.180');
  assert.is(figure(0.000123, 2), '0.000123');
  assert.is(figure(1.2345, 2), '1.23', 'three significant digits already');
  assert.is(figure(728.4, 2), '728.40', 'large values keep their decimals');
  assert.is(figure(68.04, 0), '68.0');
  assert.is(figure(1681.3, 0), '1681');
  assert.is(figure(0, 2), '0.00');
});

test('targets report: a cell that is one figure is its number, other cells their text, a failure its error', () => {
  const rows: Row[] = [];
  const target = { work: 'sampling', official: '2,466 img/s', goal: '>= 25,000 img/s', unit: 'img/s', officialValue: 2466, goalValue: 25_000 };
  attempt(rows, target, () => ({ ours: '151 img/s at batch 1000', floor: '1681 img/s (reads)', gap: '9%', oursValue: 151.2, floorValue: 1681.3, ofFloor: 0.09, more: { batch: 1000 } }));
  attempt(rows, { work: 'training', official: '6,000-8,000 img/s', goal: '>= 25,000 img/s', unit: 'img/s', goalValue: 25_000 }, () => {
    throw Object.assign(new Error('no memory'), { code: 'ERR_TARFLOW_OUT_OF_MEMORY' });
  });
  rows.push({ work: 'imagenet', official: '0.57 img/s', goal: '>= 30 img/s', unit: 'img/s', ours: 'skipped on the CPU', floor: '', gap: '' });
  assert.equal(targetsReport(rows), [
    { work: 'sampling', unit: 'img/s', official: 2466, goal: 25_000, ours: 151.2, floor: 1681.3, of_floor: 0.09, more: { batch: 1000 } },
    { work: 'training', unit: 'img/s', official: '6,000-8,000 img/s', goal: 25_000, ours: 'failed: ERR_TARFLOW_OUT_OF_MEMORY', floor: null, of_floor: null,
      failed: { code: 'ERR_TARFLOW_OUT_OF_MEMORY', message: 'no memory' } },
    { work: 'imagenet', unit: 'img/s', official: '0.57 img/s', goal: '>= 30 img/s', ours: 'skipped on the CPU', floor: null, of_floor: null },
  ]);
});

test.run();
