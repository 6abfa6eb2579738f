/**
 * Seeded fuzzing of the native operations (the CPU's; the GPU's too on a GPU run), the layer every model call ends
 * in. Each case builds a valid call of one op (small random shapes, sometimes empty or 2^20-long dimensions), then
 * damages it a few times: shapes, dtypes, views into shared or overlapping buffers, aliased or disposed tensors, odd
 * numbers (NaN, 2^63, -0), non-tensors, wrong arity, out-of-range labels, getters that dispose a tensor while the op
 * reads its options, sizes whose element count overflows. Every case must either return or throw the library's own
 * error (a code ERR_TARFLOW_*), never anything else; `npm run test:sanitize` runs this file under AddressSanitizer
 * and UBSan too, where a read out of bounds stops the run.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { getBackend, type Backend, type DeviceName, type Tensor } from '../lib/backend.js';
import { seededRandom } from '../lib/random.js';
import { int, pick, type Rng } from './helpers.js';


// Both can be changed to look further (TARFLOW_OP_FUZZ_SEED=7 TARFLOW_OP_FUZZ_CASES=100000); the suite runs these.
const CASES = Number(process.env.TARFLOW_OP_FUZZ_CASES ?? 3000);
const SEED = Number(process.env.TARFLOW_OP_FUZZ_SEED ?? 20261205);
// Large enough for every valid case, small enough that the huge ones meet the cap, not the machine's memory.
const MEMORY_LIMIT = 256 * 2 ** 20;
// Prints each case before it runs (to find one that hangs or crashes the process).
const TRACE = Boolean(process.env.TARFLOW_OP_FUZZ_TRACE);

type DType = 'float32' | 'float64' | 'int32';
type Fill = 'rand' | 'pos' | 'prob' | 'small' | 'nan' | 'inf' | 'big' | { labels: number[] };
interface TensorSpec { dtype: DType; shape: number[]; fill: Fill; view?: { pool: number; offset: number }; disposed?: boolean }
/** A tensor argument is { $t: index }; { $undef: 1 } is undefined; objects may carry $getters. */
type Node = unknown;
interface Getter { key: string; dispose: number }
interface Spec { op: string; tensors: TensorSpec[]; pools: { dtype: DType; extra: number }[]; args: Node[]; mutations: string[] }

const NUMS = [0, -0, 1, -1, 2, 3, 0.5, 1.5, -2.5, NaN, Infinity, -Infinity, 1e300, -1e300, 2 ** 31, 2 ** 31 - 1, 2 ** 32,
  2 ** 53, 2 ** 53 + 2, 2 ** 53 - 1, 2 ** 62, 2 ** 63, -(2 ** 63), 2 ** 63 - 1024, 2 ** 64, 9e15, 1e-300, Number.MAX_VALUE,
  Number.MIN_VALUE, 7, 64, 256, 257, 4096, 2 ** 40];
// Element counts past 2^63 (or a size_t's reach) when multiplied.
const WRAPPING_DIMS = [[2 ** 32, 2 ** 32], [2 ** 40, 2 ** 24], [2 ** 33, 2 ** 31], [2 ** 20, 2 ** 44]];

class CaseBuilder {
  readonly spec: Spec;
  dtype: 'float32' | 'float64';
  /** 'normal', 'zeros' (any dimension may be 0) or 'hugezero' (2^20-long dimensions next to zeros) */
  constructor(readonly r: Rng, op: string, readonly dims: 'normal' | 'zeros' | 'hugezero') {
    this.spec = { op, tensors: [], pools: [], args: [], mutations: [] };
    this.dtype = r() < 0.85 ? 'float32' : 'float64';
  }
  tensor(dtype: DType, shape: number[], fill: Fill = 'rand'): Node {
    this.spec.tensors.push({ dtype, shape: [...shape], fill });
    return { $t: this.spec.tensors.length - 1 };
  }
  float(shape: number[], fill: Fill = 'rand'): Node { return this.tensor(this.dtype, shape, fill); }
  dim(): number {
    const r = this.r;
    if (this.dims === 'normal') return pick(r, [0, 1, 1, 1, 2, 2, 2, 3, 3, 4, 5, 8]);
    return this.dims === 'zeros' ? pick(r, [0, 0, 1, 2, 3]) : pick(r, [0, 1, 2 ** 20, 2 ** 20, 2]);
  }
  positive(): number { return this.dims === 'normal' ? pick(this.r, [1, 1, 2, 2, 3, 4, 5]) : this.dim(); }
  labels(batch: number, classes: number): Node {
    return this.tensor('int32', [batch], { labels: Array.from({ length: batch }, () => (classes > 0 ? int(this.r, classes + 1) - 1 : -1)) });
  }
  precision(): { precision: 'bf16' | 'fp32' } {
    return { precision: this.dtype === 'float32' && this.r() < 0.5 ? 'bf16' : 'fp32' };
  }
  attention() {
    // Tokens stay few in 'hugezero' cases: attention over 2^20 of them is a legitimate 10^12 operations.
    const r = this.r, B = this.dim(), T = this.dims === 'hugezero' ? pick(r, [0, 1, 2]) : this.dim(), H = this.positive() || 1;
    const W = H * pick(r, this.dims === 'normal' ? [1, 2, 3, 4] : [0, 1, 2]);
    return { B, T, H, W, temp: pick(r, [1, 1, 0.5, 2]), options: r() < 0.5 ? [] : [this.precision()] };
  }
}

/** A valid (or nearly valid) call of each op. */
const CALLS: Record<string, (c: CaseBuilder) => Node[]> = {
  copy(c) {
    const s = [c.dim(), c.dim()], dt = pick(c.r, ['float32', 'float64', 'int32'] as const);
    return [c.tensor(dt, s), c.tensor(dt, s)];
  },
  axpby: (c) => { const s = [c.dim(), c.dim()]; return [c.float(s), c.float(s), pick(c.r, NUMS), pick(c.r, [0, 1, 0.5])]; },
  rowSumSquares: (c) => { const B = c.dim(); return [c.float([B]), c.float([B, c.dim(), c.dim()])]; },
  sumSquares: (c) => [c.float([c.dim(), c.dim()])],
  allFinite: (c) => [c.float([c.dim(), c.dim()], pick(c.r, ['rand', 'nan', 'inf'] as const))],
  varUpdate: (c) => { const B = c.dim(), T = c.dim(), D = c.dim(); return [c.float([T, D]), c.float([B, T, D]), pick(c.r, [0.1, 1, 0])]; },
  mulBroadcast: (c) => { const n = c.positive(); return [c.float([c.dim(), n]), c.float([n])]; },
  flipTokens: (c) => { const s = [c.dim(), c.dim(), c.dim()]; return [c.float(s), c.float(s)]; },
  patchify(c) {
    const B = c.dim(), C = c.positive(), P = c.positive(), G = c.positive();
    return [c.float([B, G * G, C * P * P]), c.float([B, C, G * P, G * P]), P];
  },
  unpatchify(c) {
    const B = c.dim(), C = c.positive(), P = c.positive(), G = c.positive();
    return [c.float([B, C, G * P, G * P]), c.float([B, G * G, C * P * P]), P];
  },
  gelu: (c) => { const s = [c.dim(), c.dim()]; return [c.float(s), c.float(s)]; },
  geluBackward: (c) => { const s = [c.dim(), c.dim()]; return [c.float(s), c.float(s), c.float(s)]; },
  addPosClass(c) {
    const B = c.dim(), T = c.positive(), W = c.positive(), n = pick(c.r, [0, 1, 3]);
    return [c.float([B, T, W]), c.float([T, W]), n ? c.float([n, 1, W]) : null, c.r() < 0.6 ? c.labels(B, n) : null, c.r() < 0.5];
  },
  addPosClassBackward(c) {
    const B = c.dim(), T = c.positive(), W = c.positive(), n = pick(c.r, [0, 1, 3]);
    return [c.float([T, W]), n ? c.float([n, 1, W]) : null, c.float([B, T, W]), c.r() < 0.6 ? c.labels(B, n) : null, c.r() < 0.5];
  },
  layerNorm(c) {
    const N = c.dim(), C = c.positive();
    return [c.float([N, C]), c.float([N]), c.float([N]), c.float([N, C]), c.float([C]), c.float([C]), pick(c.r, [1e-5, 1e-5, 0, -1, NaN])];
  },
  layerNormBackward(c) {
    const N = c.dim(), C = c.positive();
    return [c.float([N, C]), c.float([C]), c.float([C]), c.float([N, C]), c.float([N, C]), c.float([N]), c.float([N], 'pos'), c.float([C]), c.r() < 0.5];
  },
  linear(c) {
    const M = c.dim(), N = c.dim(), K = c.positive();
    const options = c.r() < 0.5 ? [] : [{ ...c.precision(), ...(c.r() < 0.4 ? { gelu: c.float([M, N]) } : {}) }];
    return [c.float([M, N]), c.float([M, K]), c.float([N, K]), c.r() < 0.7 ? c.float([N]) : null, c.r() < 0.5, ...options];
  },
  linearBackward(c) {
    const M = c.dim(), N = c.dim(), K = c.positive(), accumulate = c.r() < 0.3, geluInput = !accumulate && c.r() < 0.4;
    const dx = geluInput || c.r() < 0.7 ? c.float([M, K]) : null;
    const options = c.r() < 0.5 ? [] : [{ ...c.precision(), ...(geluInput && dx ? { geluInput: c.float([M, K]) } : {}) }];
    return [dx, c.r() < 0.7 ? c.float([N, K]) : null, c.r() < 0.7 ? c.float([N]) : null, c.float([M, N]), c.float([M, K]), c.float([N, K]), accumulate, ...options];
  },
  attention(c) {
    const d = c.attention();
    return [c.float([d.B, d.T, d.W]), c.float([d.B, d.H, d.T, d.T]), c.float([d.B, d.T, 3 * d.W]), d.H, d.temp, ...d.options];
  },
  attentionBackward(c) {
    const d = c.attention();
    return [c.float([d.B, d.T, 3 * d.W]), c.float([d.B, d.T, d.W]), c.float([d.B, d.T, 3 * d.W]), c.float([d.B, d.H, d.T, d.T], 'prob'), d.H, d.temp, ...d.options];
  },
  flashAttention(c) {
    const d = c.attention();
    return [c.float([d.B, d.T, d.W]), c.float([d.B, d.H, d.T]), c.float([d.B, d.T, 3 * d.W]), d.H, d.temp, ...d.options];
  },
  flashAttentionBackward(c) {
    const d = c.attention();
    return [c.float([d.B, d.T, 3 * d.W]), c.float([d.B, d.T, d.W]), c.float([d.B, d.T, 3 * d.W]), c.float([d.B, d.T, d.W]), c.float([d.B, d.H, d.T]), d.H, d.temp, ...d.options];
  },
  couplingForward(c) {
    const B = c.dim(), T = c.positive(), D = c.positive(), nvp = c.r() < 0.5;
    return [c.float([B, T, D]), c.float([B]), c.float([B, T, D]), c.float([B, T, nvp ? 2 * D : D]), nvp, c.r() < 0.5];
  },
  couplingBackward(c) {
    const B = c.dim(), T = c.positive(), D = c.positive(), nvp = c.r() < 0.5, Do = nvp ? 2 * D : D;
    return [c.float([B, T, D]), c.float([B, T, Do]), c.float([B, T, D]), c.float([B, T, D]), c.float([B, T, Do]), nvp, pick(c.r, [-0.5, 1, 0])];
  },
  normal: (c) => [c.float([c.dim(), c.dim()]), int(c.r, 100), int(c.r, 4), int(c.r, 10)],
  uniform: (c) => [c.float([c.dim(), c.dim()]), int(c.r, 100), int(c.r, 4), int(c.r, 10)],
  adamw(c) {
    const s = [c.dim(), c.dim()];
    return [c.float(s), c.float(s), c.float(s), c.float(s, 'pos'), { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01, step: 1 + int(c.r, 5) }];
  },
  blockReverse(c) {
    // No 2^20-token cases: decoding them is a legitimate 10^12 operations, not a fault.
    const r = c.r, B = c.dim(), T = c.dims === 'hugezero' ? pick(r, [0, 1, 2]) : pick(r, [0, 1, 2, 3, 4]);
    const D = c.dims === 'hugezero' ? pick(r, [0, 1, 2]) : c.positive(), H = pick(r, [1, 1, 2]);
    const W = H * pick(r, c.dims === 'normal' ? [1, 2, 3] : [0, 1, 2]), F = pick(r, [0, 1, 2, 4]);
    const nvp = r() < 0.6, n = pick(r, [0, 0, 1, 3]);
    const layers = Array.from({ length: pick(r, [0, 1, 1, 2]) }, () => ({
      ln1Weight: c.float([W]), ln1Bias: c.float([W]), qkvWeight: c.float([3 * W, W]), qkvBias: c.float([3 * W]), projWeight: c.float([W, W]),
      projBias: c.float([W]), ln2Weight: c.float([W]), ln2Bias: c.float([W]), fc1Weight: c.float([F, W]), fc1Bias: c.float([F]),
      fc2Weight: c.float([W, F]), fc2Bias: c.float([W]),
    }));
    const x = c.float([B, T, D]);
    const weights = {
      projInWeight: c.float([W, D]), projInBias: c.float([W]), pos: c.float([T, W]), classEmbed: n ? c.float([n, 1, W]) : null,
      projOutWeight: c.float([nvp ? 2 * D : D, W], 'small'), projOutBias: c.float([nvp ? 2 * D : D], 'small'), layers,
    };
    const options: Record<string, Node> = { flip: r() < 0.5, nvp, heads: H };
    if (r() < 0.5) options.labels = c.labels(B, n);
    if (r() < 0.5) {
      Object.assign(options, { guidance: pick(r, [0, 0.5, 2]), guideA: r() < 0.7, guideB: r() < 0.7, annealed: r() < 0.5, tempUncond: pick(r, [1, 0.5]) });
    }
    if (r() < 0.3) options.eps = 1e-5;
    if (c.dtype === 'float32' && r() < 0.4) Object.assign(options, { precision: pick(r, ['fp32', 'bf16']), kvCache: pick(r, ['fp32', 'bf16']) });
    return [x, weights, options];
  },
  getThreads: () => [],
  setThreads: (c) => [pick(c.r, [1, 2, 3, 0, -1, 257, 1.5, NaN])],
  nativeMemory: (c) => (c.r() < 0.5 ? [] : [pick(c.r, [true, false, 1, 'x'])]),
  setMemoryLimit: (c) => [pick(c.r, [0, 1, 1000, -1, 2 ** 53, NaN, 1.5, 2 ** 63])],
  // Tensor methods, called through the prototype so that a non-tensor `this` reaches the native side too:
  // [tensor, method, number, shape, array type, array length]
  $tensor(c) {
    const r = c.r;
    return [c.tensor(pick(r, ['float32', 'float64', 'int32'] as const), [c.dim(), c.dim()]), pick(r, ['view', 'view', 'fill', 'copyFrom', 'new']),
      pick(r, [...NUMS, 0, 0, 1, 2]),
      pick(r, [[1], [2, 2], [0], [], [3], [2 ** 40], [2 ** 32, 2 ** 32], [0, 9e15], [-1], [1.5], ['a'], [NaN], [1024], [4096], [2, 512]]),
      pick(r, ['Float32Array', 'Float64Array', 'Int32Array', 'Uint8Array', 'BigInt64Array', 'array']), pick(r, [0, 1, 4, 5, 16])];
  },
};
const OPS = Object.keys(CALLS);

/** Where in the call's arguments a value of that kind sits, as [container, key] pairs to overwrite. */
function slotsOf(spec: Spec, kind: 'tensor' | 'number' | 'bool' | 'null'): [Record<string | number, Node>, string | number][] {
  const out: [Record<string | number, Node>, string | number][] = [];
  const visit = (node: Node, parent: Record<string | number, Node> | null, key: string | number | null): void => {
    const here = (k: typeof kind) => { if (k === kind && parent && key !== null) out.push([parent, key]); };
    if (node && typeof node === 'object' && '$t' in node) here('tensor');
    else if (Array.isArray(node)) node.forEach((v, i) => visit(v, node as unknown as Record<number, Node>, i));
    else if (node && typeof node === 'object') for (const k of Object.keys(node)) { if (k !== '$getters') visit((node as Record<string, Node>)[k], node as Record<string, Node>, k); }
    else if (typeof node === 'number') here('number');
    else if (typeof node === 'boolean') here('bool');
    else if (node === null) here('null');
  };
  visit(spec.args, null, null);
  return out;
}

function plainObjects(spec: Spec): Record<string, Node>[] {
  const out: Record<string, Node>[] = [];
  const visit = (n: Node): void => {
    if (!n || typeof n !== 'object' || '$t' in n) return;
    if (!Array.isArray(n)) out.push(n as Record<string, Node>);
    Object.values(n).forEach(visit);
  };
  spec.args.forEach(visit);
  return out;
}

/** [name, weight, apply]; apply returns false when it does not fit the case. */
const MUTATIONS: [string, number, (c: CaseBuilder) => boolean][] = [
  ['shape', 6, (c) => {
    const ts = c.spec.tensors;
    if (!ts.length) return false;
    const t = pick(c.r, ts), s = t.shape, k = int(c.r, 5);
    if (k === 0 && s.length) s[int(c.r, s.length)] = pick(c.r, [0, 1, 2, 3, 7]);
    else if (k === 1 && s.length) { const i = int(c.r, s.length); s[i] = Math.max(0, s[i]! + pick(c.r, [-1, 1])); }
    else if (k === 2 && s.length) s.splice(int(c.r, s.length), 1);
    else if (k === 3) s.splice(int(c.r, s.length + 1), 0, pick(c.r, [1, 2]));
    else t.shape = [];
    return true;
  }],
  ['dtype', 3, (c) => {
    if (!c.spec.tensors.length) return false;
    const t = pick(c.r, c.spec.tensors);
    t.dtype = pick(c.r, (['float32', 'float64', 'int32'] as const).filter((d) => d !== t.dtype));
    return true;
  }],
  ['view', 4, (c) => {
    const ts = c.spec.tensors.filter((t) => !t.view);
    if (!ts.length) return false;
    const t = pick(c.r, ts);
    c.spec.pools.push({ dtype: t.dtype, extra: pick(c.r, [0, 1, 3, 17]) });
    t.view = { pool: c.spec.pools.length - 1, offset: pick(c.r, [0, 1, 2, 5]) };
    return true;
  }],
  ['overlap', 2, (c) => {
    const ts = c.spec.tensors.filter((t) => !t.view);
    if (ts.length < 2) return false;
    const a = pick(c.r, ts), b = pick(c.r, ts.filter((t) => t !== a));
    b.dtype = a.dtype;
    c.spec.pools.push({ dtype: a.dtype, extra: 8 });
    a.view = { pool: c.spec.pools.length - 1, offset: pick(c.r, [0, 1]) };
    b.view = { pool: c.spec.pools.length - 1, offset: pick(c.r, [0, 1, 2, 3]) };
    return true;
  }],
  ['alias', 3, (c) => {
    const slots = slotsOf(c.spec, 'tensor');
    if (slots.length < 2) return false;
    const [p, k] = pick(c.r, slots), [p2, k2] = pick(c.r, slots);
    p[k] = { $t: (p2[k2] as { $t: number }).$t };
    return true;
  }],
  ['dispose', 1, (c) => { if (!c.spec.tensors.length) return false; pick(c.r, c.spec.tensors).disposed = true; return true; }],
  ['number', 5, (c) => { const s = slotsOf(c.spec, 'number'); if (!s.length) return false; const [p, k] = pick(c.r, s); p[k] = pick(c.r, NUMS); return true; }],
  ['not a tensor', 2, (c) => {
    const s = [...slotsOf(c.spec, 'tensor'), ...slotsOf(c.spec, 'null')];
    if (!s.length) return false;
    const [p, k] = pick(c.r, s);
    p[k] = pick(c.r, [null, { $undef: 1 }, 5, {}, 'x', [], true]);
    return true;
  }],
  ['bool', 1, (c) => { const s = slotsOf(c.spec, 'bool'); if (!s.length) return false; const [p, k] = pick(c.r, s); p[k] = pick(c.r, [0, 1, 'true', null, { $undef: 1 }]); return true; }],
  ['huge', 2, (c) => {
    if (!c.spec.tensors.length) return false;
    const t = pick(c.r, c.spec.tensors), k = int(c.r, 3);
    if (k === 0) t.shape.splice(0, Math.min(2, t.shape.length), ...pick(c.r, WRAPPING_DIMS));
    else if (k === 1) { t.shape = t.shape.map(() => pick(c.r, [0, 2 ** 20, 2 ** 40, 9e15, 1])); if (!t.shape.includes(0)) t.shape.push(0); }
    else t.shape = [pick(c.r, [2 ** 28, 2 ** 40, 2 ** 41])];
    return true;
  }],
  ['disposing getter', 1, (c) => {
    const objs = plainObjects(c.spec);
    if (!objs.length || !c.spec.tensors.length) return false;
    const o = pick(c.r, objs), keys = Object.keys(o).filter((k) => k !== '$getters' && k !== '$undef');
    if (!keys.length) return false;
    ((o.$getters ??= []) as Getter[]).push({ key: pick(c.r, keys), dispose: int(c.r, c.spec.tensors.length) });
    return true;
  }],
  ['label', 2, (c) => {
    const ts = c.spec.tensors.filter((t) => typeof t.fill === 'object' && t.fill.labels.length);
    if (!ts.length) return false;
    const v = (pick(c.r, ts).fill as { labels: number[] }).labels;
    v[int(c.r, v.length)] = pick(c.r, [-1, -2, 1, 3, 4, 100, 2147483647, -2147483648]);
    return true;
  }],
  ['non-finite', 1, (c) => {
    const ts = c.spec.tensors.filter((t) => t.dtype !== 'int32');
    if (!ts.length) return false;
    pick(c.r, ts).fill = pick(c.r, ['nan', 'inf', 'big'] as const);
    return true;
  }],
  ['arity', 1, (c) => {
    const a = c.spec.args;
    if (c.r() < 0.5 && a.length) a.length = int(c.r, a.length);
    else a.push(pick(c.r, [1, null, {}]));
    return true;
  }],
];
const TOTAL_WEIGHT = MUTATIONS.reduce((s, m) => s + m[1], 0);

function makeCase(r: Rng): Spec {
  const op = pick(r, OPS);
  const c = new CaseBuilder(r, op, pick(r, ['normal', 'normal', 'normal', 'normal', 'zeros', 'hugezero'] as const));
  c.spec.args = CALLS[op]!(c);
  for (let n = pick(r, [0, 1, 1, 1, 2, 2, 3]); n > 0; n--) {
    for (let tries = 0; tries < 5; tries++) {
      let x = r() * TOTAL_WEIGHT;
      const m = MUTATIONS.find(([, w]) => (x -= w) < 0) ?? MUTATIONS[0]!;
      if (m[2](c)) { c.spec.mutations.push(m[0]); break; }
    }
  }
  return c.spec;
}

// ---------------------------------------------------------------------------------------------------------
// running a case

const numel = (s: number[]) => s.reduce((a, b) => a * b, 1);

function contents(dtype: DType, n: number, fill: Fill): Float32Array | Float64Array | Int32Array {
  const a = new { float32: Float32Array, float64: Float64Array, int32: Int32Array }[dtype](n);
  for (let i = 0; i < n; i++) {
    if (typeof fill === 'object') a[i] = fill.labels[i] ?? 0;
    else if (dtype === 'int32') a[i] = i % 3;
    else if (fill === 'pos') a[i] = 0.5 + (i % 5) * 0.1;
    else if (fill === 'prob') a[i] = 0.25;
    else a[i] = Math.sin(i + 1) * (fill === 'small' ? 0.1 : 1);
  }
  if (n > 0 && dtype !== 'int32' && typeof fill === 'string') {
    if (fill === 'nan') a[n >> 1] = NaN;
    if (fill === 'inf') a[0] = -Infinity;
    if (fill === 'big') a[0] = 3e38;
  }
  return a;
}

function materialize(node: Node, ts: Tensor[]): unknown {
  if (!node || typeof node !== 'object') return node;
  if ('$t' in node) return ts[(node as { $t: number }).$t];
  if ('$undef' in node) return undefined;
  if (Array.isArray(node)) return node.map((v) => materialize(v, ts));
  const o: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(node)) if (k !== '$getters') o[k] = materialize(v, ts);
  for (const g of ((node as { $getters?: Getter[] }).$getters ?? [])) {
    const value = o[g.key];
    Object.defineProperty(o, g.key, { get() { ts[g.dispose]?.dispose(); return value; }, enumerable: true, configurable: true });
  }
  return o;
}

type Outcome = 'returned' | 'refused';
const isLibraryError = (err: unknown) => typeof (err as { code?: unknown })?.code === 'string' && (err as { code: string }).code.startsWith('ERR_TARFLOW_');

function callTensorMethod(backend: Backend, args: unknown[]): void {
  const [t, method, num, shape, arrayType, length] = args as [Tensor, string, number, number[], string, number];
  const proto = backend.Tensor.prototype as unknown as Record<string, (...a: unknown[]) => unknown>;
  if (method === 'new') { new backend.Tensor((t as Tensor | undefined)?.dtype ?? 'float32', shape).dispose(); return; }
  if (method === 'view') {
    const v = proto.view!.call(t, num, shape) as Tensor;
    try {
      v.toArray();
      v.fill(1);
      v.toArray();
    } finally {
      v.dispose();
    }
    return;
  }
  if (method === 'fill') { (proto.fill!.call(t, num) as Tensor).toArray(); return; }
  const Ctor = (globalThis as Record<string, unknown>)[arrayType] as (new (n: number) => ArrayLike<number>) | undefined;
  const n = Number.isSafeInteger(length) && length >= 0 && length <= 4096 ? length : 3;  // the array is the harness's, not the input
  (proto.copyFrom!.call(t, Ctor ? new Ctor(n) : new Array(n).fill(0)) as Tensor).toArray();
}

/** Returns how the case ended, or throws with the case when it ended any other way. */
function run(backend: Backend, spec: Spec, index: number): Outcome {
  const { Tensor, ops } = backend;
  const made: Tensor[] = [];
  try {
    const pools = spec.pools.map((p, i) => {
      const need = Math.max(0, ...spec.tensors.filter((t) => t.view?.pool === i).map((t) => t.view!.offset + numel(t.shape)));
      const pool = new Tensor(p.dtype, [Math.min(need + p.extra, 2 ** 41)]);
      made.push(pool);
      return pool;
    });
    const ts = spec.tensors.map((t) => {
      const x = t.view ? pools[t.view.pool]!.view(t.view.offset, t.shape) : new Tensor(t.dtype, t.shape);
      made.push(x);
      const n = numel(t.shape);
      if (n > 0 && n < 1e6) x.copyFrom(contents(x.dtype as DType, n, t.fill));
      return x;
    });
    spec.tensors.forEach((t, i) => { if (t.disposed) ts[i]!.dispose(); });
    const args = materialize(spec.args, ts) as unknown[];
    if (spec.op === '$tensor') callTensorMethod(backend, args);
    else (ops as unknown as Record<string, (...a: unknown[]) => unknown>)[spec.op]!(...args);
    return 'returned';
  } catch (err) {
    if (isLibraryError(err)) return 'refused';
    const e = err as Error;
    throw new Error(`op fuzz case ${index} on ${backend.device} (seed ${SEED}, ${spec.op}; mutations: ${spec.mutations.join(', ') || 'none'}) threw ` +
      `${e?.name}: ${e?.message}\n${JSON.stringify(spec).slice(0, 2000)}`);
  } finally {
    for (const t of made) t.dispose();
  }
}

function fuzz(backend: Backend): void {
  const threads = backend.ops.getThreads(), before = backend.ops.nativeMemory(), limit = before.limitBytes;
  const seen = new Map<string, Record<Outcome, number>>(OPS.map((op) => [op, { returned: 0, refused: 0 }]));
  const r = seededRandom(SEED);
  backend.ops.setMemoryLimit(MEMORY_LIMIT);
  try {
    for (let i = 0; i < CASES; i++) {
      const spec = makeCase(r);
      if (TRACE) process.stderr.write(`${i} ${JSON.stringify(spec)}\n`);
      seen.get(spec.op)![run(backend, spec, i)]++;
      backend.ops.setThreads(threads);  // cases may change both
      backend.ops.setMemoryLimit(MEMORY_LIMIT);
    }
  } finally {
    backend.ops.setThreads(threads);
    backend.ops.setMemoryLimit(limit);
  }
  // The cases reach every op, and each op both does its work and refuses some damaged calls (getThreads excepted,
  // which takes no arguments). Checked from 1,000 cases on (about 30 per op).
  const canRefuse = (op: string) => op !== 'getThreads';
  for (const [op, n] of seen) {
    if (CASES < 1000) break;
    assert.ok(n.returned > 0, `${op}: no case returned (${JSON.stringify(n)})`);
    if (canRefuse(op)) assert.ok(n.refused > 0, `${op}: no case was refused (${JSON.stringify(n)})`);
  }
  const refused = [...seen.values()].reduce((n, o) => n + o.refused, 0);
  console.log(`op fuzz (${backend.device}): ${CASES} cases over ${OPS.length} ops, ${CASES - refused} returned, ${refused} refused with the library's error`);
  const after = backend.ops.nativeMemory();
  assert.is(after.buffers, before.buffers, 'native buffers live before and after the cases (every case disposes what it made)');
  assert.is(after.bytes, before.bytes);
}

// The CPU always; the GPU too where the suite runs on it (scripts/gpu-check.sh sets TARFLOW_DEVICE=cuda).
// TARFLOW_OP_FUZZ_DEVICE picks one (the GPU check's memcheck step fuzzes only the GPU).
const only = process.env.TARFLOW_OP_FUZZ_DEVICE;
if (only !== undefined && only !== 'cpu' && only !== 'cuda') throw new Error(`TARFLOW_OP_FUZZ_DEVICE must be cpu or cuda, not '${only}'`);
const devices: DeviceName[] = only ? [only] : ['cpu', ...(process.env.TARFLOW_DEVICE === 'cuda' ? ['cuda' as const] : [])];
for (const device of devices) {
  test(`op fuzz (${device}): ${CASES} seeded calls of every op either return or throw the library's error`, () => fuzz(getBackend(device)));
}

test.run();
