import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { formatProfile, profileRows, profileSteps } from '../bench/profile.js';
import { getBackend } from '../lib/backend.js';

const backend = getBackend('cpu');

test('profile: counts each op per step, puts the op table back, and formats the largest ops first', () => {
  const before = { ...backend.ops };
  const x = new backend.Tensor('float32', [256, 64]);
  const w = new backend.Tensor('float32', [64, 64]);
  const y = new backend.Tensor('float32', [256, 64]);
  try {
    backend.ops.normal(x, 1, 0, 0);
    backend.ops.normal(w, 2, 0, 0);
    const p = profileSteps(backend, () => {
      for (let i = 0; i < 3; i++) backend.ops.linear(y, x, w, null, false);
      backend.ops.copy(y, x);
    }, 4);
    const linear = p.ops.find((r) => r.op === 'linear');
    assert.ok(linear, 'linear timed');
    assert.is(linear!.callsPerStep, 3);
    assert.is(p.ops.find((r) => r.op === 'copy')?.callsPerStep, 1);
    assert.is(p.ops.length, 2, 'only the ops called appear');
    const shares = p.ops.reduce((s, r) => s + r.share, 0) + p.outsideOps;
    assert.ok(Math.abs(shares - 1) < 0.05, `shares sum to ${shares}`);
    assert.ok(p.ops[0].msPerStep >= p.ops[1].msPerStep, 'largest first');
    for (const [name, fn] of Object.entries(before)) assert.is((backend.ops as unknown as Record<string, unknown>)[name], fn, `${name} restored`);
    assert.match(formatProfile('t', p), /^t: \d+ ms a step\n/);
    assert.match(formatProfile('t', p), /\n {2}linear +[\d.]+ ms +3 +[\d.]+%/);
    // Put back after a failing step too.
    assert.throws(() => profileSteps(backend, () => { throw new Error('boom'); }, 1), /boom/);
    for (const [name, fn] of Object.entries(before)) assert.is((backend.ops as unknown as Record<string, unknown>)[name], fn, `${name} restored after an error`);
  } finally {
    x.dispose();
    w.dispose();
    y.dispose();
  }
});

test('profile rows: the step, every op and the time outside them, in ms per step', () => {
  // Binary fractions, so that the percentages come out exact.
  const p = { msPerStep: 100, ops: [{ op: 'linear', msPerStep: 50, callsPerStep: 3, share: 0.5 }, { op: 'copy', msPerStep: 0.390625, callsPerStep: 1, share: 0.00390625 }], outsideOps: 0.49609375 };
  const rows = profileRows('small', p, 4, 'fp32');
  assert.equal(rows.map((r) => [r.name, r.value, r.share_percent]), [['small', 100, undefined], ['small: linear', 50, 50], ['small: copy', 0.390625, 0.390625], ['small: outside the ops', 49.609375, 49.609375]]);
  for (const r of rows) {
    assert.is(r.part, 'profile');
    assert.is(r.unit, 'ms/step');
    assert.is(r.samples, 4);
  }
  assert.is(rows[1].calls_per_step, 3);
  assert.match(formatProfile('t', p), /1 other ops/, 'the text folds the smallest ops; the rows keep them');
});

test.run();
