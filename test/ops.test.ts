/** Properties of single ops that the model's guarantees rest on. */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { getBackend } from '../lib/backend.js';

const b = getBackend('cpu');

test('noise: any window of a stream equals the same elements of a longer read (batch-size independence)', () => {
  for (const kind of ['normal', 'uniform'] as const) {
    for (const dtype of ['float32', 'float64'] as const) {
      const long = new b.Tensor(dtype, [5000]);
      b.ops[kind](long, 42, 7, 11);
      const all = long.toArray();
      let compared = 0;
      for (const [offset, n] of [[0, 1], [1, 3], [2, 7], [3, 64], [5, 4093], [997, 1]]) {
        const t = new b.Tensor(dtype, [n]);
        b.ops[kind](t, 42, 7, 11 + offset);
        const w = t.toArray();
        for (let i = 0; i < n; i++) assert.is(w[i], all[offset + i], `${kind} ${dtype} element ${offset + i}`);
        compared += n;
        t.dispose();
      }
      assert.ok(compared > 4000);
      long.dispose();
    }
  }
});

test('noise: streams and seeds differ; moments are right', () => {
  const n = 200_000;
  const a = new b.Tensor('float64', [n]);
  b.ops.normal(a, 1, 0, 0);
  const x = a.toArray();
  let m = 0, v = 0;
  for (const e of x) m += e;
  m /= n;
  for (const e of x) v += (e - m) ** 2;
  v /= n;
  assert.ok(Math.abs(m) < 0.01 && Math.abs(v - 1) < 0.01, `normal mean ${m}, variance ${v}`);
  b.ops.uniform(a, 1, 0, 0);
  const u = a.toArray();
  let um = 0, lo = 1, hi = 0;
  for (const e of u) { um += e; lo = Math.min(lo, e); hi = Math.max(hi, e); }
  assert.ok(Math.abs(um / n - 0.5) < 0.005 && lo >= 0 && hi < 1, `uniform mean ${um / n}, range [${lo}, ${hi}]`);
  const s1 = new b.Tensor('float32', [8]), s2 = new b.Tensor('float32', [8]), s3 = new b.Tensor('float32', [8]);
  b.ops.normal(s1, 1, 0, 0);
  b.ops.normal(s2, 1, 1, 0);
  b.ops.normal(s3, 2, 0, 0);
  assert.not.equal(Array.from(s1.toArray()), Array.from(s2.toArray()));
  assert.not.equal(Array.from(s1.toArray()), Array.from(s3.toArray()));
  for (const t of [a, s1, s2, s3]) t.dispose();
});

test('noise does not depend on the thread count', () => {
  const before = b.ops.getThreads();
  const draw = () => {
    const t = new b.Tensor('float32', [100_003]);
    b.ops.normal(t, 9, 2, 12345);
    const r = Array.from(t.toArray());
    t.dispose();
    return r;
  };
  b.ops.setThreads(1);
  const one = draw();
  b.ops.setThreads(3);
  const three = draw();
  b.ops.setThreads(before);
  assert.equal(one, three);
});

test.run();
