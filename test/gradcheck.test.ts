/**
 * Finite-difference gradient checks in float64: the model's explicit backward (dL/dx and every parameter
 * tensor) on tiny random models, NVP and VP, conditional and unconditional; and the native backward ops one by
 * one (attention and its fused form at temperatures != 1, LayerNorm, GELU, the coupling, linear, the position/class embeddings).
 *
 * Derivatives use the fourth-order central difference (f(-2h) - 8 f(-h) + 8 f(h) - f(2h)) / 12h with h = 1e-4:
 * its truncation error (~h^4) and rounding error (~1e-16 / h) both sit far below the 1e-6 relative tolerance,
 * which the plain two-point difference at h = 1e-6 does not reach for the smallest gradients.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { TarFlow } from '../lib/model.js';
import { ParamSet } from '../lib/params.js';
import type { Tensor } from '../lib/backend.js';
import type { TarFlowConfig } from '../lib/config.js';
import { gaussian, mulberry32, randomizeParams } from './helpers.js';

const H = 1e-4;
const RTOL = 1e-6;

/** Fourth-order central difference of f at 0. */
function fd(f: (d: number) => number, h = H): number {
  return (8 * (f(h) - f(-h)) - (f(2 * h) - f(-2 * h))) / (12 * h);
}

/**
 * Combined criterion: |analytic - numeric| <= RTOL * |numeric| + atol. `atol` is a tiny multiple of the typical
 * gradient size, so entries whose true gradient is zero (e.g. the key bias, to which softmax is invariant)
 * pass, while a wrong sign, a missing term or a factor off anywhere fails by orders of magnitude.
 */
function checkClose(what: string, analytic: number, numeric: number, atol: number): void {
  const err = Math.abs(analytic - numeric);
  assert.ok(Number.isFinite(analytic) && Number.isFinite(numeric), `${what}: non-finite gradient (analytic ${analytic}, numeric ${numeric})`);
  assert.ok(err <= RTOL * Math.abs(numeric) + atol,
    `${what}: analytic ${analytic.toExponential(6)} vs finite difference ${numeric.toExponential(6)} (abs err ${err.toExponential(2)}, rel ${(err / Math.max(Math.abs(numeric), 1e-300)).toExponential(2)})`);
}

function maxAbs(a: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]));
  return m;
}

function randomArray(n: number, seed: number, scale = 1): Float64Array {
  const g = gaussian(seed);
  return new Float64Array(n).map(() => scale * g());
}

function dot(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
}

// ---------------------------------------------------------------------------------------------------------
// the whole model

interface Case { name: string; cfg: Partial<TarFlowConfig>; batch: number; labels: number[] | null }
const cases: Case[] = [
  { name: 'NVP conditional (one dropped label)', cfg: { inChannels: 2, imgSize: 4, patchSize: 2, channels: 64, numBlocks: 2, layersPerBlock: 2, nvp: true, numClasses: 3 }, batch: 3, labels: [2, -1, 0] },
  { name: 'NVP unconditional (3 blocks)', cfg: { inChannels: 1, imgSize: 4, patchSize: 2, channels: 64, numBlocks: 3, layersPerBlock: 1, nvp: true, numClasses: 0 }, batch: 2, labels: null },
  { name: 'VP conditional (one dropped label)', cfg: { inChannels: 1, imgSize: 4, patchSize: 2, channels: 64, numBlocks: 2, layersPerBlock: 2, nvp: false, numClasses: 2 }, batch: 2, labels: [-1, 1] },
  { name: 'VP unconditional', cfg: { inChannels: 2, imgSize: 4, patchSize: 2, channels: 64, numBlocks: 2, layersPerBlock: 1, nvp: false, numClasses: 0 }, batch: 3, labels: null },
];

const ENTRIES_PER_TENSOR = 4;

cases.forEach((c, ci) => {
  test(`model gradients match finite differences: ${c.name}`, () => {
    const model = new TarFlow(c.cfg, { device: 'cpu', dtype: 'float64', seed: 1 + ci });
    randomizeParams(model, 11 + ci);
    const ws = model.workspace(c.batch);
    const g = gaussian(100 + ci);
    const x = new Float64Array(ws.x.size).map(() => Math.max(-1, Math.min(1, 0.5 * g())));
    const labels = c.labels ? Int32Array.from(c.labels) : null;
    model.setInputs(ws, x, labels);
    const { loss, logdet } = model.forward(ws);
    assert.ok(Number.isFinite(loss));
    // The randomised model is not the identity: NVP models have a non-zero log-determinant.
    if (c.cfg.nvp) assert.ok(Math.abs(logdet[0]) > 1e-3, `logdet ${logdet[0]} is trivially zero`);
    else assert.ok(logdet.every((v) => v === 0), 'VP blocks are volume preserving: logdet must be 0');

    const grads = new ParamSet(model.backend, model.config, model.specs, model.dtype);
    model.backward(ws, grads);
    const dx = Float64Array.from(ws.dx.toArray());
    const ga = Float64Array.from(grads.flat.toArray());
    const lossAt = () => model.forward(ws).loss;

    // dL/dx, every element.
    const atolX = 1e-9 * maxAbs(dx);
    const xx = Float64Array.from(x);
    for (let i = 0; i < x.length; i++) {
      const num = fd((d) => {
        xx[i] = x[i] + d;
        model.setInputs(ws, xx, labels);
        return lossAt();
      });
      xx[i] = x[i];
      checkClose(`dL/dx[${i}]`, dx[i], num, atolX);
    }
    model.setInputs(ws, x, labels);

    // A sample of entries of every parameter tensor (every class row of class_embed: the dropped label reaches
    // the rows of unused classes only through the mean embedding).
    const host = Float64Array.from(model.params.flat.toArray());
    const atolP = 1e-9 * maxAbs(ga);
    const rnd = mulberry32(7 + ci);
    let nonTrivial = 0, checked = 0;
    for (const s of model.specs) {
      const picks: number[] = [];
      if (s.name.endsWith('class_embed')) {
        const W = s.shape[2];
        for (let k = 0; k < s.shape[0]; k++) picks.push(k * W + Math.floor(rnd() * W));
      }
      while (picks.length < ENTRIES_PER_TENSOR + (s.name.endsWith('class_embed') ? s.shape[0] : 0)) picks.push(Math.floor(rnd() * s.size));
      let tensorNonTrivial = false;
      for (const i of picks) {
        const j = s.offset + i;
        const v = model.params.flat.view(j, [1]);
        const num = fd((d) => {
          v.copyFrom(Float64Array.of(host[j] + d));
          return lossAt();
        });
        v.copyFrom(Float64Array.of(host[j]));
        v.dispose();
        checkClose(`dL/d ${s.name}[${i}]`, ga[j], num, atolP);
        checked++;
        if (Math.abs(ga[j]) > 1e-6 * maxAbs(ga)) {
          nonTrivial++;
          tensorNonTrivial = true;
        }
      }
      // Only the key bias has an identically zero gradient (softmax is shift invariant); every other tensor must
      // show a gradient somewhere in the sample, or the check above would be vacuous for it.
      if (!s.name.endsWith('qkv.bias')) assert.ok(tensorNonTrivial, `${s.name}: all sampled gradients are ~0; the check is vacuous`);
    }
    assert.ok(nonTrivial > 0.8 * checked, `only ${nonTrivial} of ${checked} sampled gradients are non-trivial`);
    assert.is(model.params.flat.toArray().every((v, i) => v === host[i]), true, 'parameters were not restored');

    // backward(ws, null) gives the same dL/dx; gradients accumulate across calls.
    model.forward(ws);
    model.backward(ws, null);
    assert.equal(Array.from(ws.dx.toArray()), Array.from(dx));
    model.backward(ws, grads);
    const twice = grads.flat.toArray();
    for (let i = 0; i < ga.length; i++) {
      if (Math.abs(twice[i] - 2 * ga[i]) > 1e-12 * (Math.abs(ga[i]) + 1e-30)) assert.unreachable(`gradient ${i} did not accumulate: ${twice[i]} != 2 * ${ga[i]}`);
    }
    grads.dispose();
    model.dispose();
  });
});

test('the key bias has zero gradient and the query/value biases do not (sanity of the attention layout)', () => {
  const model = new TarFlow(cases[1].cfg, { device: 'cpu', dtype: 'float64', seed: 3 });
  randomizeParams(model, 5);
  const ws = model.workspace(2);
  model.setInputs(ws, randomArray(ws.x.size, 9, 0.4));
  model.forward(ws);
  const grads = new ParamSet(model.backend, model.config, model.specs, model.dtype);
  model.backward(ws, grads);
  const b = grads.get('blocks.0.attn_blocks.0.attention.qkv.bias').toArray();
  const W = model.config.channels;
  const q = maxAbs(b.subarray(0, W)), k = maxAbs(b.subarray(W, 2 * W)), v = maxAbs(b.subarray(2 * W));
  assert.ok(k < 1e-12 * Math.max(q, v), `key bias gradient ${k} should vanish next to ${q}, ${v}`);
  assert.ok(q > 0 && v > 0);
  grads.dispose();
  model.dispose();
});

// ---------------------------------------------------------------------------------------------------------
// single ops (float64 tensors)

const cpu = new TarFlow({ inChannels: 1, imgSize: 4, patchSize: 2, channels: 64, numBlocks: 1, layersPerBlock: 1 }, { device: 'cpu', dtype: 'float64', noInit: true });
const ops = cpu.ops;
const T64 = (shape: number[], data?: Float64Array): Tensor => new cpu.backend.Tensor('float64', shape, data);

/**
 * Checks d/d(input) of L = <R, f(inputs)> (+ extra) against finite differences for `count` sampled entries
 * (or all when count >= size) of the input tensor `inp`.
 */
function checkInput(what: string, inp: Tensor, analytic: ArrayLike<number>, L: () => number, count: number, seed: number): void {
  const host = Float64Array.from(inp.toArray());
  const atol = 1e-9 * maxAbs(analytic);
  assert.ok(maxAbs(analytic) > 0, `${what}: the analytic gradient is all zero`);
  const rnd = mulberry32(seed);
  const idx = count >= host.length ? host.map((_, i) => i) : Array.from({ length: count }, () => Math.floor(rnd() * host.length));
  for (const i of idx) {
    const num = fd((d) => {
      host[i] += d;
      inp.copyFrom(host);
      const l = L();
      host[i] -= d;
      return l;
    });
    inp.copyFrom(host);
    checkClose(`${what}[${i}]`, analytic[i], num, atol);
  }
}

for (const temp of [0.6, 1, 1.7]) {
  test(`attentionBackward matches finite differences (temp ${temp}, 3 heads of 4)`, () => {
    const B = 2, T = 5, Wd = 12, heads = 3;
    const qkv = T64([B, T, 3 * Wd], randomArray(B * T * 3 * Wd, 21, 0.8));
    const out = T64([B, T, Wd]), probs = T64([B, heads, T, T]);
    const R = randomArray(B * T * Wd, 22);
    const Rt = T64([B, T, Wd], R);
    const L = () => {
      ops.attention(out, probs, qkv, heads, temp);
      return dot(R, out.toArray());
    };
    L();
    // probs rows sum to one and respect the causal mask
    const p = probs.toArray();
    for (let r = 0; r < B * heads * T; r++) {
      const i = r % T;
      let s = 0;
      for (let j = 0; j < T; j++) {
        s += p[r * T + j];
        if (j > i) assert.is(p[r * T + j], 0, 'causal mask violated');
      }
      assert.ok(Math.abs(s - 1) < 1e-12);
    }
    const dqkv = T64([B, T, 3 * Wd]);
    ops.attentionBackward(dqkv, Rt, qkv, probs, heads, temp);
    checkInput('dqkv', qkv, Float64Array.from(dqkv.toArray()), L, Infinity, 1);
    [qkv, out, probs, Rt, dqkv].forEach((t) => t.dispose());
  });

  // T = 70 crosses several of the CPU reference's 16-key blocks of the online softmax.
  test(`flashAttentionBackward matches finite differences (temp ${temp}, 3 heads of 4, T 5 and 70)`, () => {
    for (const [B, T, count] of [[2, 5, Infinity], [1, 70, 200]]) {
      const Wd = 12, heads = 3;
      const qkv = T64([B, T, 3 * Wd], randomArray(B * T * 3 * Wd, 23, 0.8));
      const out = T64([B, T, Wd]), lse = T64([B, heads, T]);
      const R = randomArray(B * T * Wd, 24);
      const Rt = T64([B, T, Wd], R);
      const L = () => {
        ops.flashAttention(out, lse, qkv, heads, temp);
        return dot(R, out.toArray());
      };
      L();
      const dqkv = T64([B, T, 3 * Wd]);
      ops.flashAttentionBackward(dqkv, Rt, qkv, out, lse, heads, temp);
      checkInput('dqkv', qkv, Float64Array.from(dqkv.toArray()), L, count, 2);
      [qkv, out, lse, Rt, dqkv].forEach((t) => t.dispose());
    }
  });
}

test('attention temperature scales the logits: temp 2 equals halving q', () => {
  const B = 1, T = 4, Wd = 8, heads = 2;
  const data = randomArray(B * T * 3 * Wd, 31);
  const qkv = T64([B, T, 3 * Wd], data);
  const half = Float64Array.from(data);
  for (let t = 0; t < T; t++) for (let c = 0; c < Wd; c++) half[t * 3 * Wd + c] *= 0.5;
  const qkv2 = T64([B, T, 3 * Wd], half);
  const o1 = T64([B, T, Wd]), o2 = T64([B, T, Wd]), p1 = T64([B, heads, T, T]), p2 = T64([B, heads, T, T]);
  ops.attention(o1, p1, qkv, heads, 2);
  ops.attention(o2, p2, qkv2, heads, 1);
  const a = o1.toArray(), b = o2.toArray();
  for (let i = 0; i < a.length; i++) assert.ok(Math.abs(a[i] - b[i]) < 1e-13);
  const o3 = T64([B, T, Wd]);
  ops.attention(o3, p2, qkv, heads, 1);
  assert.ok(Math.abs(o3.toArray()[Wd + 1] - a[Wd + 1]) > 1e-6, 'the temperature had no effect');
  [qkv, qkv2, o1, o2, o3, p1, p2].forEach((t) => t.dispose());
});

test('layerNormBackward matches finite differences (dx accumulated, dweight and dbias)', () => {
  const N = 6, C = 10;
  const x = T64([N, C], randomArray(N * C, 41, 1.5).map((v, i) => v + (i % 3)));
  const w = T64([C], randomArray(C, 42, 0.3).map((v) => 1 + v));
  const b = T64([C], randomArray(C, 43, 0.3));
  const y = T64([N, C]), mean = T64([N]), rstd = T64([N]);
  const R = randomArray(N * C, 44);
  const L = () => {
    ops.layerNorm(y, mean, rstd, x, w, b, 1e-5);
    return dot(R, y.toArray());
  };
  L();
  const prior = randomArray(N * C, 45);
  const dx = T64([N, C], prior), dw = T64([C]), db = T64([C]);
  const Rt = T64([N, C], R);
  ops.layerNormBackward(dx, dw, db, Rt, x, mean, rstd, w, true);
  const dxa = Float64Array.from(dx.toArray()).map((v, i) => v - prior[i]);
  checkInput('LN dx', x, dxa, L, Infinity, 1);
  checkInput('LN dweight', w, Float64Array.from(dw.toArray()), L, Infinity, 2);
  checkInput('LN dbias', b, Float64Array.from(db.toArray()), L, Infinity, 3);
  // dweight and dbias accumulate; dx is overwritten without accumulateDx
  const dw0 = Float64Array.from(dw.toArray());
  ops.layerNorm(y, mean, rstd, x, w, b, 1e-5);
  ops.layerNormBackward(dx, dw, db, Rt, x, mean, rstd, w, false);
  const dw1 = dw.toArray();
  for (let i = 0; i < C; i++) assert.ok(Math.abs(dw1[i] - 2 * dw0[i]) <= 1e-14 * Math.abs(dw0[i]) + 1e-300);
  const dx1 = dx.toArray();
  for (let i = 0; i < N * C; i++) assert.ok(Math.abs(dx1[i] - dxa[i]) <= 1e-12 * maxAbs(dxa));
  [x, w, b, y, mean, rstd, dx, dw, db, Rt].forEach((t) => t.dispose());
});

test('geluBackward matches finite differences (exact erf GELU)', () => {
  const n = 40;
  const x = T64([n], randomArray(n, 51, 2));
  const y = T64([n]);
  const R = randomArray(n, 52);
  const L = () => {
    ops.gelu(y, x);
    return dot(R, y.toArray());
  };
  L();
  // gelu(1) = 0.5 (1 + erf(1/sqrt 2)) = 0.8413447460685429
  const one = T64([1], Float64Array.of(1)), yo = T64([1]);
  ops.gelu(yo, one);
  assert.ok(Math.abs(yo.toArray()[0] - 0.8413447460685429) < 1e-15, `gelu(1) = ${yo.toArray()[0]}`);
  const dx = T64([n]);
  ops.geluBackward(dx, T64([n], R), x);
  checkInput('gelu dx', x, Float64Array.from(dx.toArray()), L, Infinity, 1);
  [x, y, one, yo, dx].forEach((t) => t.dispose());
});

for (const nvp of [true, false]) {
  test(`couplingBackward matches finite differences (${nvp ? 'NVP' : 'VP'}, with the log-det term)`, () => {
    const B = 2, T = 4, D = 3, Do = nvp ? 2 * D : D;
    const u = T64([B, T, D], randomArray(B * T * D, 61));
    const o = T64([B, T, Do], randomArray(B * T * Do, 62, 0.5));
    const v = T64([B, T, D]), logdet = T64([B]);
    const R = randomArray(B * T * D, 63);
    const c = -0.37; // dL/dlogdet for every sample
    const L = () => {
      ops.couplingForward(v, logdet, u, o, nvp, false);
      const ld = logdet.toArray();
      return dot(R, v.toArray()) + c * (ld[0] + ld[1]);
    };
    L();
    // token 0 passes unchanged
    for (let b = 0; b < B; b++) for (let k = 0; k < D; k++) assert.is(v.toArray()[b * T * D + k], u.toArray()[b * T * D + k]);
    const du = T64([B, T, D]), dout = T64([B, T, Do]);
    ops.couplingBackward(du, dout, T64([B, T, D], R), u, o, nvp, c);
    checkInput('coupling du', u, Float64Array.from(du.toArray()), L, Infinity, 1);
    checkInput('coupling do', o, Float64Array.from(dout.toArray()), L, Infinity, 2);
    [u, o, v, logdet, du, dout].forEach((t) => t.dispose());
  });
}

test('linearBackward matches finite differences (dx, dweight, dbias)', () => {
  const M = 5, K = 7, N = 6;
  const x = T64([M, K], randomArray(M * K, 71));
  const w = T64([N, K], randomArray(N * K, 72, 0.4));
  const b = T64([N], randomArray(N, 73));
  const y = T64([M, N]);
  const R = randomArray(M * N, 74);
  const L = () => {
    ops.linear(y, x, w, b, false);
    return dot(R, y.toArray());
  };
  L();
  const dx = T64([M, K]), dw = T64([N, K]), db = T64([N]);
  ops.linearBackward(dx, dw, db, T64([M, N], R), x, w, false);
  checkInput('linear dx', x, Float64Array.from(dx.toArray()), L, Infinity, 1);
  checkInput('linear dweight', w, Float64Array.from(dw.toArray()), L, Infinity, 2);
  checkInput('linear dbias', b, Float64Array.from(db.toArray()), L, Infinity, 3);
  [x, w, b, y, dx, dw, db].forEach((t) => t.dispose());
});

for (const flip of [false, true]) {
  test(`addPosClassBackward matches finite differences (flip ${flip}, labels with a dropped one)`, () => {
    const B = 3, T = 4, W = 5, n = 3;
    const h0 = randomArray(B * T * W, 81);
    const h = T64([B, T, W]);
    const pos = T64([T, W], randomArray(T * W, 82));
    const cls = T64([n, 1, W], randomArray(n * W, 83));
    const labels = new cpu.backend.Tensor('int32', [B], Int32Array.of(2, -1, 2));
    const R = randomArray(B * T * W, 84);
    const L = () => {
      h.copyFrom(h0);
      ops.addPosClass(h, pos, cls, labels, flip);
      return dot(R, h.toArray());
    };
    L();
    const dpos = T64([T, W]), dcls = T64([n, 1, W]);
    ops.addPosClassBackward(dpos, dcls, T64([B, T, W], R), labels, flip);
    checkInput('dpos', pos, Float64Array.from(dpos.toArray()), L, Infinity, 1);
    checkInput('dclassEmbed', cls, Float64Array.from(dcls.toArray()), L, Infinity, 2);
    [h, pos, cls, labels, dpos, dcls].forEach((t) => t.dispose());
  });
}

test.after(() => cpu.dispose());
test.run();
