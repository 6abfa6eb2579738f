import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { profileSteps } from '../bench/profile.js';
import { attempt, gemmRate, samplingRate, type Row } from '../bench/targets.js';
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
  attempt(rows, 'work', 'official', 'goal', () => ({ ours: '1 img/s', floor: '', gap: '' }));
  attempt(rows, 'broken', 'official', 'goal', () => {
    throw Object.assign(new Error('no memory'), { code: 'ERR_TARFLOW_OUT_OF_MEMORY' });
  });
  assert.is(rows[0].failed, undefined);
  assert.is(rows[1].failed, true);
  assert.is(rows[1].ours, 'failed: ERR_TARFLOW_OUT_OF_MEMORY');
});

test.run();
