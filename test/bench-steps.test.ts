import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { samplingRow, trainingRun } from '../bench/steps.js';
import { getBackend } from '../lib/backend.js';
import { LIKELIHOOD_TEMPERATURE } from '../lib/sampling.js';

const backend = getBackend('cpu');

test('bench sample row: the shipped likelihood model is drawn at its own temperature (at 1, seed 0 overflowed in every redraw)', async () => {
  const { text, rows } = await samplingRow(backend, 'mnist-bpd', 100, 0, 1);
  assert.match(text, new RegExp(`^sample mnist-bpd 100 images unguided, temperature ${LIKELIHOOD_TEMPERATURE}: [\\d.]+ s \\(\\d+ images/s, median of 1\\)$`));
  assert.is(rows[0].temperature, LIKELIHOOD_TEMPERATURE);
  assert.match((await samplingRow(backend, 'tiny', 8, 0, 1)).text, /^sample tiny 8 images unguided: /, 'fresh weights at temperature 1, not named');
});

test('bench training rows use the data loader threads --workers asks for', async () => {
  for (const workers of [0, 1]) {
    const { model, trainer } = await trainingRun({ backend, precision: 'fp32', workers }, 'tiny', 16, 1);
    try {
      const loader = (trainer as unknown as { loader: { workers: number } | null }).loader;
      assert.is(loader?.workers, workers);
    } finally {
      trainer.dispose();
      model.dispose();
    }
  }
});

test.run();
