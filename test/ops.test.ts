/** Properties of single ops that the model's guarantees rest on. */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { getBackend, type Ops } from '../lib/backend.js';
import { TarFlow } from '../lib/model.js';

const b = getBackend('cpu');

// Every op of the TypeScript interface, once: the Record type makes tsc reject a missing or an unknown name.
const OP_NAMES: Record<keyof Ops, true> = {
  copy: true, axpby: true, rowSumSquares: true, sumSquares: true, allFinite: true, varUpdate: true, mulBroadcast: true,
  flipTokens: true, patchify: true, unpatchify: true, gelu: true, geluBackward: true, addPosClass: true,
  addPosClassBackward: true, layerNorm: true, layerNormBackward: true, linear: true, linearBackward: true, attention: true,
  attentionBackward: true, flashAttention: true, flashAttentionBackward: true, couplingForward: true, couplingBackward: true,
  normal: true, uniform: true, adamw: true, blockReverse: true, getThreads: true, nativeMemory: true, setMemoryLimit: true,
  setThreads: true,
};

// The native table (native/common/op_table.h) and lib/backend.ts's Ops are written separately; cuda-parity compares
// the two native tables, and this keeps the TypeScript one in step with them.
test('the native op table has exactly the ops of the TypeScript Ops interface', () => {
  assert.equal(Object.keys(b.ops).sort(), Object.keys(OP_NAMES).sort());
});

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

/** Philox4x32-10 block j of (seed, stream), in BigInt arithmetic: the reference the native generator must match. */
function philoxBlock(seed: bigint, stream: bigint, j: bigint): number[] {
  const M = 0xffffffffn;
  let [c0, c1, c2, c3] = [j & M, j >> 32n, stream & M, stream >> 32n];
  let [k0, k1] = [seed & M, seed >> 32n];
  for (let round = 0; round < 10; round++) {
    const p0 = 0xd2511f53n * c0, p1 = 0xcd9e8d57n * c2;
    [c0, c1, c2, c3] = [((p1 >> 32n) ^ c1 ^ k0) & M, p1 & M, ((p0 >> 32n) ^ c3 ^ k1) & M, p0 & M];
    k0 = (k0 + 0x9e3779b9n) & M;
    k1 = (k1 + 0xbb67ae85n) & M;
  }
  return [c0, c1, c2, c3].map(Number);
}

test('normal: Box-Muller on words 0 and 1 of block i/2, within 3 float ulps of the double-precision formula', () => {
  const seed = 2n ** 40n + 3n, stream = 77n, offset = 2 ** 35 + 1;
  const n = 4000;
  const t = new b.Tensor('float32', [n]);
  b.ops.normal(t, Number(seed), Number(stream), offset);
  const got = t.toArray();
  t.dispose();
  for (let k = 0; k < n; k++) {
    const i = offset + k;
    const [w0, w1] = philoxBlock(seed, stream, BigInt(Math.floor(i / 2)));
    const radius = Math.sqrt(-2 * Math.log((w0 + 1) / 2 ** 32));
    const angle = (2 * Math.PI * w1) / 2 ** 32;
    const want = radius * (i % 2 ? Math.sin(angle) : Math.cos(angle));
    assert.ok(Math.abs(got[k] - want) <= 3 * 2 ** -23 * Math.max(radius, 2 ** -20), `element ${i}: ${got[k]}, formula ${want}`);
  }
});

test('normal: float32 and float64 tensors receive the same values', () => {
  const n = 1001;
  const f32 = new b.Tensor('float32', [n]), f64 = new b.Tensor('float64', [n]);
  b.ops.normal(f32, 5, 6, 7);
  b.ops.normal(f64, 5, 6, 7);
  assert.equal(Array.from(f64.toArray()), Array.from(f32.toArray()));
  f32.dispose();
  f64.dispose();
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


// The label check skips reading labels when their buffer's recorded bound proves them in range (on the GPU that read
// waits for the stream), so every way int32 values reach a buffer must raise that bound, or a bad label gets through.
test('labels: every write path keeps the out-of-range check exact (copyFrom, views, fill, copy, flipTokens)', () => {
  const B = 4, T = 3, W = 8, nCls = 10;
  const h = new b.Tensor('float32', [B, T, W]);
  const pos = new b.Tensor('float32', [T, W]);
  const cls = new b.Tensor('float32', [nCls, 1, W]);
  const labels = new b.Tensor('int32', [B], Int32Array.from([0, 9, -1, 3]));
  const embed = () => b.ops.addPosClass(h, pos, cls, labels, false);
  const rejects = (why: string) => assert.throws(embed, /label \d+ of sample \d+ is out of range/, why);
  embed();
  labels.copyFrom(Int32Array.from([1, 2, 10, 0]));
  rejects('whole-buffer copyFrom');
  labels.copyFrom(Int32Array.from([1, 2, 3, 0]));
  embed();  // a whole-buffer write lowers the bound again
  const big = new b.Tensor('int32', [2 * B]);
  const lower = big.view(0, [B]), upper = big.view(B, [B]);
  upper.copyFrom(Int32Array.from([0, 0, 11, 0]));
  lower.copyFrom(Int32Array.from([0, 0, 0, 0]));
  assert.throws(() => b.ops.addPosClass(h, pos, cls, upper, false), /out of range/, 'view written after its sibling');
  b.ops.addPosClass(h, pos, cls, lower, false);  // in range, read exactly because the shared bound is 11
  labels.fill(nCls);
  rejects('fill');
  assert.throws(() => labels.fill(2 ** 40), /whole numbers/);
  assert.throws(() => labels.fill(1.5), /whole numbers/);
  labels.fill(0);
  embed();
  b.ops.copy(labels, upper);
  rejects('copy');
  labels.copyFrom(Int32Array.from([0, 0, 0, 0]));
  const src = new b.Tensor('int32', [1, B, 1], Int32Array.from([0, 0, 0, 12]));
  const flipped = new b.Tensor('int32', [1, B, 1]);
  b.ops.flipTokens(flipped, src);
  assert.equal(Array.from(flipped.toArray()), [12, 0, 0, 0]);
  assert.throws(() => b.ops.addPosClass(h, pos, cls, flipped.view(0, [B]), false), /out of range/, 'flipTokens');
  for (const t of [h, pos, cls, labels, big, lower, upper, src, flipped]) t.dispose();
});

test('empty dimensions: every op either does nothing or refuses with a tarflow error (never touches memory outside)', () => {
  const made: Array<InstanceType<typeof b.Tensor>> = [];
  const T = (shape: number[]) => {
    const t = new b.Tensor('float32', shape);
    made.push(t);
    return t;
  };
  // Each op at a tiny valid shape with one dimension (x: batch-like, y: token- or width-like) set to 0 in turn.
  const ops: Record<string, (x: number, y: number) => void> = {
    layerNorm: (x, y) => b.ops.layerNorm(T([x, y]), T([x]), T([x]), T([x, y]), T([y]), T([y]), 1e-5),
    layerNormBackward: (x, y) => b.ops.layerNormBackward(T([x, y]), T([y]), T([y]), T([x, y]), T([x, y]), T([x]), T([x]), T([y]), false),
    linear: (x, y) => b.ops.linear(T([x, y]), T([x, y]), T([y, y]), T([y]), false),
    linearBackward: (x, y) => b.ops.linearBackward(T([x, y]), T([y, y]), T([y]), T([x, y]), T([x, y]), T([y, y]), false),
    attention: (x, y) => b.ops.attention(T([x, y, 64]), T([x, 1, y, y]), T([x, y, 192]), 1, 1),
    attentionBackward: (x, y) => b.ops.attentionBackward(T([x, y, 192]), T([x, y, 64]), T([x, y, 192]), T([x, 1, y, y]), 1, 1),
    flashAttention: (x, y) => b.ops.flashAttention(T([x, y, 64]), T([x, 1, y]), T([x, y, 192]), 1, 1),
    flashAttentionBackward: (x, y) => b.ops.flashAttentionBackward(T([x, y, 192]), T([x, y, 64]), T([x, y, 192]), T([x, y, 64]), T([x, 1, y]), 1, 1),
    couplingForward: (x, y) => b.ops.couplingForward(T([x, y, 4]), T([x]), T([x, y, 4]), T([x, y, 8]), true, false),
    couplingBackward: (x, y) => b.ops.couplingBackward(T([x, y, 4]), T([x, y, 8]), T([x, y, 4]), T([x, y, 4]), T([x, y, 8]), true, 1),
    'couplingForward (D = 0)': (x, y) => b.ops.couplingForward(T([x, y, 0]), T([x]), T([x, y, 0]), T([x, y, 0]), true, false),
    'couplingBackward (D = 0)': (x, y) => b.ops.couplingBackward(T([x, y, 0]), T([x, y, 0]), T([x, y, 0]), T([x, y, 0]), T([x, y, 0]), true, 1),
    gelu: (x, y) => b.ops.gelu(T([x, y]), T([x, y])),
    geluBackward: (x, y) => b.ops.geluBackward(T([x, y]), T([x, y]), T([x, y])),
    flipTokens: (x, y) => b.ops.flipTokens(T([x, y, 4]), T([x, y, 4])),
    addPosClass: (x, y) => b.ops.addPosClass(T([x, y, 8]), T([y, 8]), null, null, true),
    addPosClassBackward: (x, y) => b.ops.addPosClassBackward(T([y, 8]), null, T([x, y, 8]), null, true),
    adamw: (x, y) => b.ops.adamw(T([x, y]), T([x, y]), T([x, y]), T([x, y]), { lr: 1e-3, beta1: 0.9, beta2: 0.99, eps: 1e-8, weightDecay: 0.1, step: 1 }),
    normal: (x, y) => b.ops.normal(T([x, y]), 1, 0, 0),
  };
  let refused = 0;
  for (const [name, run] of Object.entries(ops)) {
    for (const [x, y] of [[0, 3], [2, 0], [0, 0]]) {
      try {
        run(x, y);
      } catch (e) {
        const code = (e as { code?: string }).code ?? '';
        assert.ok(code.startsWith('ERR_TARFLOW_'), `${name} at (${x}, ${y}) threw ${String(e)} without a tarflow code`);
        refused++;
      }
    }
  }
  // A token-less coupling is refused by name (it used to write in front of its buffer: heap corruption).
  assert.throws(() => ops.couplingBackward(1, 0), (e: Error) => (e as Error & { code?: string }).code === 'ERR_TARFLOW_SHAPE' && /at least one token/.test(e.message));
  assert.throws(() => ops['couplingForward (D = 0)'](1, 2), /at least one token/);
  assert.ok(refused >= 8, `expected the empty couplings to be refused, ${refused} refusals`);
  for (const t of made) t.dispose();
});

// Each case below once crashed the process, corrupted memory, divided by zero or looped for hours (found by fuzzing the
// ops under AddressSanitizer); each must now be a refusal with a tarflow code.
test('hostile op arguments are refused with a code: overflowing shapes, 0-d tensors, overlaps, disposal by a getter', () => {
  const made: Array<InstanceType<typeof b.Tensor>> = [];
  const T = (shape: number[], dtype: 'float32' | 'float64' | 'int32' = 'float32') => {
    const t = new b.Tensor(dtype, shape);
    made.push(t);
    return t;
  };
  const refused = (what: string, run: () => unknown, code?: string) => {
    try {
      run();
    } catch (e) {
      const c = (e as { code?: string }).code ?? '';
      assert.ok(c.startsWith('ERR_TARFLOW_'), `${what}: threw ${String(e)} without a tarflow code`);
      if (code) assert.is(c, code, what);
      return;
    }
    assert.unreachable(`${what} was accepted`);
  };
  // Shapes whose products overflow int64, even when another dim is 0; a view offset near 2^63.
  refused('shape 2^32 x 2^32', () => T([2 ** 32, 2 ** 32, 1, 1]), 'ERR_TARFLOW_OUT_OF_MEMORY');
  refused('empty shape with 2^41 beside its 0', () => T([0, 2 ** 41]), 'ERR_TARFLOW_OUT_OF_MEMORY');
  refused('view at offset 2^62', () => T([4]).view(2 ** 62, [2048]), 'ERR_TARFLOW_SHAPE');
  refused('varUpdate with an empty z whose batch times var wraps', () => b.ops.varUpdate(T([2 ** 24]), T([2 ** 40, 0]), 0.1), 'ERR_TARFLOW_SHAPE');
  // 0-d tensors where an op reads a dimension.
  refused('rowSumSquares of a 0-d x', () => b.ops.rowSumSquares(T([1]), T([])), 'ERR_TARFLOW_SHAPE');
  refused('linear into a 0-d y', () => b.ops.linear(T([]), T([1, 1]), T([1, 1]), null, false), 'ERR_TARFLOW_SHAPE');
  // Overlapping views: copy would memcpy onto itself, flipTokens would read what it already wrote.
  const p = T([8]);
  refused('copy between overlapping views', () => b.ops.copy(p.view(1, [4]), p.view(0, [4])), 'ERR_TARFLOW_INVALID_ARGUMENT');
  refused('flipTokens between overlapping views', () => b.ops.flipTokens(p.view(1, [1, 1, 2]), p.view(0, [1, 1, 2])), 'ERR_TARFLOW_INVALID_ARGUMENT');
  assert.throws(() => b.ops.flipTokens(p.view(1, [1, 1, 2]), p.view(0, [1, 1, 2])), (e: Error) => /^flipTokens: y and x/.test(e.message), 'the op is named once');
  b.ops.copy(p, p); // the same elements: a no-op, allowed
  // The coupling's GPU kernels write while other threads read: du over u, or do over dv, would give wrong gradients.
  const c = T([2, 3, 4]), o8 = T([2, 3, 8]), dv4 = T([2, 3, 4]), do8 = T([2, 3, 8]);
  refused('couplingBackward with du = u', () => b.ops.couplingBackward(c, do8, dv4, c, o8, true, 1), 'ERR_TARFLOW_INVALID_ARGUMENT');
  refused('couplingBackward with do = o', () => b.ops.couplingBackward(dv4, o8, T([2, 3, 4]), c, o8, true, 1), 'ERR_TARFLOW_INVALID_ARGUMENT');
  refused('couplingForward with v over o', () => b.ops.couplingForward(o8.view(0, [2, 3, 4]), T([2]), c, o8, true, false), 'ERR_TARFLOW_INVALID_ARGUMENT');
  b.ops.couplingBackward(dv4, do8, dv4, c, o8, true, 1); // du = dv: each element reads its gradient before writing it
  b.ops.couplingForward(c, T([2]), c, o8, true, false); // v = u, in place
  // Widths of 0 (a division by zero in the class-embedding check) and empty tensors with huge other dims (hours of
  // empty loops).
  refused('addPosClass with W = 0 and a classEmbed', () => b.ops.addPosClass(T([1, 2, 0]), T([2, 0]), T([3, 1, 2]), null, false), 'ERR_TARFLOW_SHAPE');
  // The class gradient of no tokens for 2^20 samples of width 2^20: nothing to add (it once looped 2^40 times).
  const dcls = T([3, 1, 2 ** 20]).fill(0.5);
  b.ops.addPosClassBackward(T([0, 2 ** 20]), dcls, T([2 ** 20, 0, 2 ** 20]), null, true);
  assert.ok(dcls.toArray().every((v) => v === 0.5), 'dclassEmbed unchanged');
  refused('flipTokens over 2^40 empty tokens', () => b.ops.flipTokens(T([1, 2 ** 40, 0]), T([1, 2 ** 40, 0])), 'ERR_TARFLOW_SHAPE');
  refused('patchify of a channel-less image', () => b.ops.patchify(T([2 ** 40, 1, 0]), T([2 ** 40, 0, 1, 1]), 1), 'ERR_TARFLOW_SHAPE');
  refused('attention over no tokens', () => b.ops.attention(T([2 ** 20, 0, 64]), T([2 ** 20, 1, 0, 0]), T([2 ** 20, 0, 192]), 1, 1), 'ERR_TARFLOW_SHAPE');
  refused('flashAttention with head size 0', () => b.ops.flashAttention(T([1, 2, 0]), T([1, 1, 2]), T([1, 2, 0]), 1, 1), 'ERR_TARFLOW_SHAPE');
  // A tensor disposed by a getter of the options object the op reads after unwrapping it.
  const y = T([2, 2]);
  refused('linear whose options getter disposes y', () => b.ops.linear(y, T([2, 2]), T([2, 2]), null, false, { get precision() { y.dispose(); return 'fp32' as const; } }), 'ERR_TARFLOW_DISPOSED');
  const fake = Object.create(b.Tensor.prototype) as InstanceType<typeof b.Tensor>;
  refused('an object that only shares the Tensor prototype', () => b.ops.gelu(fake, T([2])), 'ERR_TARFLOW_INVALID_ARGUMENT');
  for (const key of ['shape', 'dtype', 'size', 'disposed']) {
    const getter = Object.getOwnPropertyDescriptor(b.Tensor.prototype, key)?.get;
    assert.ok(getter, `Tensor.prototype.${key} is an accessor`);
    refused(`Tensor.prototype.${key} read on a plain object`, () => getter.call({}), 'ERR_TARFLOW_INVALID_ARGUMENT');
    refused(`Tensor.prototype.${key} read on a prototype-only object`, () => Reflect.get(b.Tensor.prototype, key, fake), 'ERR_TARFLOW_INVALID_ARGUMENT');
  }
  for (const key of ['toArray', 'copyFrom', 'view', 'fill', 'dispose']) {
    const method = (b.Tensor.prototype as unknown as Record<string, (...args: unknown[]) => unknown>)[key];
    assert.type(method, 'function', `Tensor.prototype.${key} is a method`);
    refused(`Tensor.prototype.${key} called on a plain object`, () => method.call({}), 'ERR_TARFLOW_INVALID_ARGUMENT');
    refused(`Tensor.prototype.${key} called on a prototype-only object`, () => method.call(fake), 'ERR_TARFLOW_INVALID_ARGUMENT');
  }
  const params = [T([4]), T([4]), T([4]), T([4])] as const;
  // Integers out of int64's range or NaN (converting those to int64_t is undefined behaviour in C++, so they are
  // refused before any conversion), and a non-boolean where a boolean goes.
  for (const n of [2 ** 63, -(2 ** 64), NaN, Infinity]) {
    refused(`setMemoryLimit(${n})`, () => b.ops.setMemoryLimit(n), 'ERR_TARFLOW_INVALID_ARGUMENT');
    refused(`view at offset ${n}`, () => T([4]).view(n, [1]), 'ERR_TARFLOW_INVALID_ARGUMENT');
    refused(`a shape with ${n}`, () => T([1, n]), 'ERR_TARFLOW_INVALID_ARGUMENT');
  }
  assert.throws(() => b.ops.setMemoryLimit(2 ** 63), /between -2\^63 and 2\^63/);
  refused("nativeMemory('yes')", () => b.ops.nativeMemory('yes' as unknown as boolean), 'ERR_TARFLOW_INVALID_ARGUMENT');
  assert.type(b.ops.nativeMemory(undefined).bytes, 'number');
  refused('adamw at step NaN', () => b.ops.adamw(...params, { lr: 1e-3, beta1: 0.9, beta2: 0.99, eps: 1e-8, weightDecay: 0, step: NaN }), 'ERR_TARFLOW_INVALID_ARGUMENT');

  // blockReverse: a classEmbed of another dtype (read as doubles past its end), a fractional head count, no values per
  // token (scratch sized by an unchecked batch).
  const model = new TarFlow({ inChannels: 1, imgSize: 4, patchSize: 2, channels: 64, numBlocks: 1, layersPerBlock: 1, numClasses: 3 }, { device: 'cpu', dtype: 'float64', seed: 0 });
  try {
    const weights = model.params.blocks[0];
    const x = T([2, 4, 4], 'float64');
    const labels = new b.Tensor('int32', [2], Int32Array.from([0, 2]));
    made.push(labels);
    b.ops.blockReverse(x, weights, { flip: false, nvp: true, heads: 1, labels }); // the valid call, for contrast
    refused('blockReverse with a float32 classEmbed in a float64 model', () => b.ops.blockReverse(x, { ...weights, classEmbed: T([3, 1, 64]) }, { flip: false, nvp: true, heads: 1, labels }), 'ERR_TARFLOW_DTYPE');
    refused('blockReverse with heads 1.5', () => b.ops.blockReverse(x, weights, { flip: false, nvp: true, heads: 1.5, labels }), 'ERR_TARFLOW_INVALID_ARGUMENT');
    refused('blockReverse with no values per token', () => b.ops.blockReverse(T([2 ** 20, 4, 0], 'float64'), weights, { flip: false, nvp: true, heads: 1 }), 'ERR_TARFLOW_SHAPE');
    // Temperatures divide the attention scores, and a NaN guidance would make every sample NaN.
    for (const tempUncond of [0, -1, NaN, Infinity])
      refused(`blockReverse with tempUncond ${tempUncond}`, () => b.ops.blockReverse(x, weights, { flip: false, nvp: true, heads: 1, labels, guidance: 1, tempUncond }), 'ERR_TARFLOW_INVALID_ARGUMENT');
    refused('blockReverse with guidance NaN', () => b.ops.blockReverse(x, weights, { flip: false, nvp: true, heads: 1, labels, guidance: NaN }), 'ERR_TARFLOW_INVALID_ARGUMENT');
  } finally {
    model.dispose();
  }
  const qkv = T([1, 3, 6]), out = T([1, 3, 2]), probs = T([1, 1, 3, 3]), lse = T([1, 1, 3]);
  b.ops.attention(out, probs, qkv, 1, 0.5); // the valid call, for contrast
  for (const temp of [0, -1, NaN, Infinity]) {
    refused(`attention with temp ${temp}`, () => b.ops.attention(out, probs, qkv, 1, temp), 'ERR_TARFLOW_INVALID_ARGUMENT');
    refused(`flashAttention with temp ${temp}`, () => b.ops.flashAttention(out, lse, qkv, 1, temp), 'ERR_TARFLOW_INVALID_ARGUMENT');
  }
  assert.throws(() => b.ops.attention(out, probs, qkv, 1, 0), /attention temperature\) must be a finite number above 0, got 0/);
  for (const t of made) t.dispose();
});


// native/common/denormals.h: the CPU kernels flush subnormal inputs and results to zero (x64 and arm64; a trained
// model's softmax weights and gradients are full of them, and x86 computes them ~100x slower), and the calling
// thread's own floating-point mode, which JavaScript's numbers rely on, comes back after every op.
const flushes = process.arch === 'x64' || process.arch === 'arm64';
test('denormals: CPU ops flush subnormal results and inputs to zero; JavaScript keeps its subnormals', () => {
  const f32 = new b.Tensor('float32', [4]);
  const out32 = new b.Tensor('float32', [4]);
  f32.copyFrom(Float32Array.from([1e-20, -3e-21, 1, 1e-40])); // the last is subnormal in float32
  b.ops.axpby(out32, f32, 1e-20, 0);
  const r32 = out32.toArray();
  assert.ok(Math.abs(r32[2] - 1e-20) < 1e-26, `a normal result is kept: ${r32[2]}`);
  if (flushes) assert.equal([r32[0], r32[1], r32[3]], [0, 0, 0], 'subnormal float32 results are zero');
  else assert.ok(r32[0] > 0, 'results are subnormal where the mode is not set');
  b.ops.axpby(out32, f32, 1e30, 0);
  const scaled = out32.toArray()[3];
  if (flushes) assert.is(scaled, 0, 'a subnormal float32 input reads as zero');
  else assert.ok(Math.abs(scaled - 1e-10) < 1e-15);
  const f64 = new b.Tensor('float64', [2]);
  const out64 = new b.Tensor('float64', [2]);
  f64.copyFrom(Float64Array.from([1e-300, 1]));
  b.ops.axpby(out64, f64, 1e-10, 0);
  const r64 = out64.toArray();
  assert.is(r64[1], 1e-10);
  if (flushes) assert.is(r64[0], 0, 'subnormal float64 results are zero');
  // Values from run time, so that nothing is folded at compile time: a mode left set would make this 0.
  const tiny = Number('5e-324');
  assert.ok(tiny * Number('3') > 0, 'the JavaScript thread still computes subnormal doubles after an op');
  for (const t of [f32, out32, f64, out64]) t.dispose();
});

test.run();
