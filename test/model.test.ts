/**
 * Model-level properties: the sampler inverts the forward pass, the likelihood of a fresh model has a closed
 * form, results are reproducible (seeds, thread counts), checkpoints round-trip, and bad input fails with a
 * TarflowError (or, from the native ops, an Error with the same `code`) that names the problem, without
 * crashing the process.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as nodePath from 'node:path';
import { spawnSync } from 'node:child_process';
import { TarFlow } from '../lib/model.js';
import { ParamSet } from '../lib/params.js';
import type { FloatDType, Tensor } from '../lib/backend.js';
import { fromReferenceConfig, modelShape, toReferenceConfig, validateConfig, type TarFlowConfig } from '../lib/config.js';
import { TarflowError, type TarflowErrorCode } from '../lib/errors.js';
import { loadModel, saveModel, stateDict } from '../lib/checkpoint.js';
import { f32Tensor, writeSafetensors } from '../lib/safetensors.js';
import { getBackend } from '../lib/backend.js';
import { gaussian, randomizeParams, relError } from './helpers.js';

// ---------------------------------------------------------------------------------------------------------
// helpers

/** Runs fn, expects an error with `code` (a TarflowError from lib/, or a native Error carrying the same code). */
function throwsCode(fn: () => unknown, code: TarflowErrorCode, pattern?: RegExp): Error {
  let caught: unknown;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  return checkError(caught, code, pattern);
}

async function rejectsCode(p: () => Promise<unknown>, code: TarflowErrorCode, pattern?: RegExp): Promise<Error> {
  let caught: unknown;
  try {
    await p();
  } catch (err) {
    caught = err;
  }
  return checkError(caught, code, pattern);
}

function checkError(caught: unknown, code: TarflowErrorCode, pattern?: RegExp): Error {
  if (caught === undefined) assert.unreachable(`expected an error with code ${code}, nothing was thrown`);
  assert.instance(caught, Error, `expected an Error, got ${String(caught)}`);
  const err = caught as Error & { code?: string };
  assert.is(err.code, code, `wrong code ${err.code}; message: ${err.message}`);
  assert.is(err.name, 'TarflowError');
  if (pattern) assert.match(err.message, pattern);
  return err;
}

const tmpRoot = fs.mkdtempSync(nodePath.join(os.tmpdir(), 'tarflow-model-test-'));
let tmpCount = 0;
const tmpPath = (name: string) => nodePath.join(tmpRoot, `${tmpCount++}-${name}`);

function randomImages(n: number, seed: number, scale = 0.5): Float64Array {
  const g = gaussian(seed);
  return new Float64Array(n).map(() => Math.max(-1, Math.min(1, scale * g())));
}

function arr(t: Tensor): number[] {
  return Array.from(t.toArray());
}

/** Bitwise-equal arrays, reporting the first difference (uvu's diff of 100k numbers is unreadable). */
function sameArray(got: ArrayLike<number>, want: ArrayLike<number>, what: string): void {
  assert.is(got.length, want.length, `${what}: length ${got.length} vs ${want.length}`);
  for (let i = 0; i < want.length; i++) {
    if (!Object.is(got[i], want[i])) assert.unreachable(`${what}: element ${i} is ${got[i]}, expected ${want[i]}`);
  }
}

/** Every named parameter tensor equal (the flat buffer's alignment padding is not part of the model). */
function sameParams(a: TarFlow, b: TarFlow, what: string): void {
  assert.equal(a.specs.map((s) => s.name), b.specs.map((s) => s.name));
  for (const s of a.specs) sameArray(a.params.get(s.name).toArray(), b.params.get(s.name).toArray(), `${what}: ${s.name}`);
}

/** Patchify per the spec: patch t row-major over the grid; value index c*P*P + ky*P + kx. */
function patchify(x: ArrayLike<number>, B: number, C: number, S: number, P: number): Float64Array {
  const G = S / P, T = G * G, D = C * P * P;
  const out = new Float64Array(B * T * D);
  for (let b = 0; b < B; b++)
    for (let gy = 0; gy < G; gy++)
      for (let gx = 0; gx < G; gx++)
        for (let c = 0; c < C; c++)
          for (let ky = 0; ky < P; ky++)
            for (let kx = 0; kx < P; kx++) {
              const t = gy * G + gx;
              out[(b * T + t) * D + c * P * P + ky * P + kx] = x[((b * C + c) * S + gy * P + ky) * S + gx * P + kx];
            }
  return out;
}

const base = { inChannels: 1, imgSize: 8, patchSize: 2, channels: 64, numBlocks: 2, layersPerBlock: 1 } as const;

// ---------------------------------------------------------------------------------------------------------
// forward(reverse(z)) == z

interface InvCase { nvp: boolean; numClasses: number; dtype: FloatDType; cfg?: Partial<TarFlowConfig> }
const invCases: InvCase[] = [];
for (const dtype of ['float64', 'float32'] as const)
  for (const nvp of [true, false]) for (const numClasses of [0, 3]) invCases.push({ nvp, numClasses, dtype });
invCases.push({ nvp: true, numClasses: 2, dtype: 'float32', cfg: { inChannels: 2, numBlocks: 3, layersPerBlock: 2 } });

invCases.forEach((c, ci) => {
  const name = `${c.nvp ? 'NVP' : 'VP'} ${c.numClasses ? 'conditional' : 'unconditional'} ${c.dtype}${c.cfg ? ' (2 channels, 3 blocks, 2 layers)' : ''}`;
  test(`forward(reverse(z)) = z * sqrt(var): ${name}`, () => {
    const model = new TarFlow({ ...base, ...c.cfg, nvp: c.nvp, numClasses: c.numClasses }, { device: 'cpu', dtype: c.dtype, seed: ci });
    randomizeParams(model, 200 + ci, 0.05, 0.1);
    const { tokens: T, patchDim: D } = model.shape;
    const { inChannels: C, imgSize: S } = model.config;
    const B = 3;
    // a non-trivial prior variance (VP models learn one; reverse applies it for NVP models too)
    const variance = new Float64Array(T * D).map((_, i) => 0.5 + ((i * 37) % 11) / 10);
    model.variance.copyFrom(c.dtype === 'float64' ? variance : Float32Array.from(variance));
    const g = gaussian(300 + ci);
    const z = new Float64Array(B * T * D).map(() => g());
    const Tz = new model.backend.Tensor(c.dtype, [B, T, D], c.dtype === 'float64' ? z : Float32Array.from(z));
    const images = new model.backend.Tensor(c.dtype, [B, C, S, S]);
    const labelArr = c.numClasses ? Int32Array.of(c.numClasses - 1, -1, 0) : null;
    const labels = labelArr ? new model.backend.Tensor('int32', [B], labelArr) : null;
    model.reverse(Tz, images, labels);
    const x = images.toArray();
    assert.ok(model.ops.allFinite(images), 'reverse produced non-finite images');

    const ws = model.workspace(B);
    model.setInputs(ws, x as Float32Array | Float64Array, labelArr);
    const { logdet } = model.forward(ws);
    const want = z.map((v, i) => v * Math.sqrt(variance[i % (T * D)]));
    const err = relError(ws.z.toArray(), want);
    const tol = c.dtype === 'float64' ? 1e-9 : 1e-4;
    assert.ok(err < tol, `forward(reverse(z)) differs from z*sqrt(var): relative error ${err.toExponential(3)} >= ${tol}`);
    // ... and the inverse is not trivial: the images are far from unpatchify(z * sqrt(var))
    const direct = patchify(x, B, C, S, model.config.patchSize);
    assert.ok(relError(direct, want) > 0.05, 'the random model is (nearly) the identity; the test would be vacuous');
    if (c.nvp) assert.ok(Math.abs(logdet[0]) > 1e-3, `NVP log-determinant ${logdet[0]} is trivially 0`);
    [Tz, images].forEach((t) => t.dispose());
    labels?.dispose();
    model.dispose();
  });
});

// ---------------------------------------------------------------------------------------------------------
// reduced-precision sampling: bf16 matrix products and a bf16 KV cache (the GPU's fast sampler; the CPU is its
// reference). Each moves the samples by about bf16's rounding, and must move them: an option that did nothing
// would pass a closeness check alone.

test('sampling with a bf16 KV cache and bf16 products stays within bf16 rounding of fp32, and differs from it', () => {
  const cfg = { ...base, imgSize: 16, numBlocks: 2, layersPerBlock: 2, nvp: true, numClasses: 0 };
  const fp32 = new TarFlow(cfg, { device: 'cpu', seed: 5 });
  const bf16 = new TarFlow(cfg, { device: 'cpu', seed: 5, precision: 'bf16' });
  for (const m of [fp32, bf16]) randomizeParams(m, 77, 0.05, 0.1);
  const { tokens: T, patchDim: D } = fp32.shape;
  const B = 2, n = B * T * D;
  const g = gaussian(78);
  const z = Float32Array.from({ length: n }, () => g());
  const sample = (model: TarFlow, options: { kvCache?: 'fp32' | 'bf16' } = {}) => {
    const Tz = new model.backend.Tensor('float32', [B, T, D], z);
    const out = new model.backend.Tensor('float32', [B, 1, 16, 16]);
    model.reverse(Tz, out, null, options);
    const x = out.toArray();
    Tz.dispose();
    out.dispose();
    return x;
  };
  const ref = sample(fp32);
  const cases: [string, ArrayLike<number>][] = [
    ['fp32 products, bf16 cache', sample(fp32, { kvCache: 'bf16' })],
    ['bf16 products, fp32 cache', sample(bf16, { kvCache: 'fp32' })],
    ['bf16 products and cache (the bf16 model\'s default)', sample(bf16)],
  ];
  for (const [name, x] of cases) {
    const err = relError(x, ref);
    assert.ok(err > 1e-6 && err < 2e-2, `${name}: relative difference from fp32 ${err.toExponential(3)}, expected in (1e-6, 2e-2)`);
  }
  assert.equal(Array.from(sample(bf16, { kvCache: 'bf16' })), Array.from(cases[2][1]), 'a bf16 model caches in bf16 by default');
  fp32.dispose();
  bf16.dispose();
});

// ---------------------------------------------------------------------------------------------------------
// block recomputation: the same loss, latents and gradients to the bit, for the memory of one block's layers

for (const [dtype, fusedAttention] of [['float32', false], ['float32', true], ['float64', false]] as const) {
  test(`recompute: same results to the bit, one block's layer activations instead of ${3} (${dtype}, ${fusedAttention ? 'fused' : 'unfused'} attention)`, () => {
    const cfg = { ...base, numBlocks: 3, layersPerBlock: 2, numClasses: 3, nvp: true };
    const B = 3;
    const run = (recompute: boolean) => {
      const model = new TarFlow(cfg, { device: 'cpu', dtype, seed: 2, fusedAttention, recompute });
      randomizeParams(model, 31, 0.05, 0.1);
      model.ops.nativeMemory(true);
      const ws = model.workspace(B);
      const g = gaussian(32);
      model.setInputs(ws, Float64Array.from({ length: ws.x.size }, () => Math.max(-1, Math.min(1, 0.5 * g()))), Int32Array.of(2, -1, 0));
      const { loss } = model.forward(ws);
      const grads = new ParamSet(model.backend, model.config, model.specs, model.dtype);
      grads.flat.fill(0);
      model.backward(ws, grads);
      const peak = model.ops.nativeMemory().peakBytes;
      const r = { loss, z: Array.from(ws.z.toArray()), dx: Array.from(ws.dx.toArray()), grads: Array.from(grads.flat.toArray()), peak };
      grads.dispose();
      model.dispose();
      return r;
    };
    const full = run(false), re = run(true);
    assert.is(re.loss, full.loss);
    assert.equal(re.z, full.z, 'latents differ');
    assert.equal(re.dx, full.dx, 'dL/dx differs');
    assert.equal(re.grads, full.grads, 'parameter gradients differ');
    // What recompute leaves out: two blocks' layer activations, counted here from their shapes.
    const { tokens: T, heads: H, hidden: F } = modelShape(validateConfig(cfg));
    const W = cfg.channels!, L = cfg.layersPerBlock;
    const perToken = (L + 1) * W + L * (7 * W + 2 * F + 4 + (fusedAttention ? H : H * T));
    const blockBytes = B * T * perToken * (dtype === 'float64' ? 8 : 4);
    assert.is(full.peak - re.peak, 2 * blockBytes, `peak ${full.peak} without recompute, ${re.peak} with it`);
  });
}

test("recompute 'auto' (the default) keeps every block's activations when they fit and recomputes, with a warning, when they do not", async () => {
  const cfg = { ...base, numBlocks: 3, layersPerBlock: 2, numClasses: 3, nvp: true };
  const B = 3;
  const sizes = (recompute: boolean) => {
    const model = new TarFlow(cfg, { device: 'cpu', seed: 2, recompute });
    const before = model.ops.nativeMemory().bytes;
    model.workspace(B);
    const bytes = model.ops.nativeMemory().bytes - before;
    model.dispose();
    return bytes;
  };
  const full = sizes(false), reduced = sizes(true);
  assert.ok(reduced < full);
  const fits = new TarFlow(cfg, { device: 'cpu', seed: 2 });
  assert.is(fits.recompute, 'auto');
  assert.is(fits.workspace(B).recompute, false, 'recomputed although everything fits');
  fits.dispose();
  const model = new TarFlow(cfg, { device: 'cpu', seed: 2 });
  const explicit = new TarFlow(cfg, { device: 'cpu', seed: 2, recompute: false });
  const warnings: Error[] = [];
  const onWarning = (w: Error) => warnings.push(w);
  process.on('warning', onWarning);
  const quiet = process.env.TARFLOW_QUIET;
  delete process.env.TARFLOW_QUIET;
  // room for the smaller workspace only
  model.ops.setMemoryLimit(model.ops.nativeMemory().bytes + Math.floor((full + reduced) / 2));
  try {
    try {
      explicit.workspace(B);
      assert.unreachable('recompute: false allocated past the limit');
    } catch (err) {
      assert.is((err as TarflowError).code, 'ERR_TARFLOW_OUT_OF_MEMORY');
    }
    const ws = model.workspace(B);
    assert.is(ws.recompute, true);
    const g = gaussian(5);
    model.setInputs(ws, Float32Array.from({ length: ws.x.size }, () => Math.max(-1, Math.min(1, 0.5 * g()))), Int32Array.of(2, -1, 0));
    assert.ok(Number.isFinite(model.forward(ws).loss));
    await new Promise((r) => setImmediate(r)); // warnings are emitted on the next tick
  } finally {
    model.ops.setMemoryLimit(0);
    process.off('warning', onWarning);
    if (quiet !== undefined) process.env.TARFLOW_QUIET = quiet;
    model.dispose();
    explicit.dispose();
  }
  const recomputeWarnings = warnings.filter((w) => (w as Error & { code?: string }).code === 'TARFLOW_RECOMPUTE');
  assert.is(recomputeWarnings.length, 1);
  assert.match(recomputeWarnings[0].message, /batch 3 did not fit .*recomputing earlier blocks/);
  assert.throws(() => new TarFlow(cfg, { device: 'cpu', recompute: 'yes' as never }), /recompute: expected true, false or 'auto', got "yes"/);
});

// ---------------------------------------------------------------------------------------------------------
// likelihood at initialisation

for (const nvp of [true, false]) {
  test(`fresh ${nvp ? 'NVP' : 'VP'} model: loss and bits/dim match the closed form`, () => {
    const model = new TarFlow({ ...base, inChannels: 2, nvp, numClasses: 2 }, { device: 'cpu', dtype: 'float64', seed: 4 });
    const { tokens: T, patchDim: D } = model.shape;
    const { inChannels: C, imgSize: S, patchSize: P } = model.config;
    const B = 3, n = T * D;
    const x = randomImages(B * C * S * S, 40, 0.6);
    const ws = model.workspace(B);
    model.setInputs(ws, x, Int32Array.of(0, -1, 1));
    const c0 = 0.5 * Math.log(2 * Math.PI) + Math.log(128);

    // The proj_out weight starts at zero but its bias keeps PyTorch's default init (as in the reference), so
    // each block is a fixed per-position affine map: v_i = (u_i - b) * exp(-a) for i >= 1 in the block's order.
    let u = patchify(x, B, C, S, P);
    const ld = new Float64Array(B);
    for (let k = 0; k < model.config.numBlocks; k++) {
      const bias = model.params.get(`blocks.${k}.proj_out.bias`).toArray();
      const a = (j: number) => (nvp ? bias[j] : 0);
      const sh = (j: number) => (nvp ? bias[D + j] : bias[j]);
      const flip = k % 2 === 1;
      const next = new Float64Array(u.length);
      let sumA = 0;
      for (let j = 0; j < D; j++) sumA += a(j);
      for (let b = 0; b < B; b++) {
        for (let i = 0; i < T; i++) {
          const t = flip ? T - 1 - i : i; // position i in the block's order is token t
          for (let j = 0; j < D; j++) {
            const idx = (b * T + t) * D + j;
            next[idx] = i === 0 ? u[idx] : (u[idx] - sh(j)) * Math.exp(-a(j));
          }
        }
        ld[b] += -((T - 1) * sumA) / n;
      }
      u = next;
    }
    const { loss, logdet } = model.forward(ws);
    assert.ok(relError(ws.z.toArray(), u) < 1e-13, `z differs from the closed form: ${relError(ws.z.toArray(), u)}`);
    assert.ok(relError(logdet, ld) < 1e-12, `logdet ${logdet} vs ${ld}`);
    if (nvp) assert.ok(Math.abs(ld[0]) > 1e-4, 'closed-form logdet is trivially 0');
    let ssAll = 0;
    const ss = new Float64Array(B);
    for (let i = 0; i < u.length; i++) {
      ss[Math.floor(i / n)] += u[i] * u[i];
      ssAll += u[i] * u[i];
    }
    const wantLoss = (0.5 * ssAll) / (B * n) - ld.reduce((p, q) => p + q, 0) / B;
    assert.ok(Math.abs(loss - wantLoss) < 1e-13 * Math.abs(wantLoss), `loss ${loss} vs closed form ${wantLoss}`);
    const bpd = model.bitsPerDim(ws, logdet);
    for (let b = 0; b < B; b++) {
      const want = ((0.5 * ss[b]) / n + c0 - ld[b]) / Math.LN2;
      assert.ok(Math.abs(bpd[b] - want) < 1e-12, `bpd[${b}] ${bpd[b]} vs ${want}`);
    }

    // With the proj_out biases zeroed too, the model is exactly the identity: z = patchify(x), logdet = 0,
    // loss = 0.5 mean(x^2) and bpd = (0.5 mean(x^2) + 0.5 ln(2 pi) + ln 128) / ln 2 per image.
    for (let k = 0; k < model.config.numBlocks; k++) model.params.get(`blocks.${k}.proj_out.bias`).fill(0);
    const r = model.forward(ws);
    sameArray(ws.z.toArray(), patchify(x, B, C, S, P), 'identity z');
    assert.equal(Array.from(r.logdet), [0, 0, 0]);
    const meanSq = x.reduce((p, v) => p + v * v, 0) / x.length;
    assert.ok(Math.abs(r.loss - 0.5 * meanSq) < 1e-15, `identity loss ${r.loss} vs ${0.5 * meanSq}`);
    const bpd2 = model.bitsPerDim(ws, r.logdet);
    for (let b = 0; b < B; b++) {
      const img = x.subarray(b * n, (b + 1) * n);
      const want = (0.5 * img.reduce((p, v) => p + v * v, 0) / n + c0) / Math.LN2;
      assert.ok(Math.abs(bpd2[b] - want) < 1e-12, `identity bpd[${b}] ${bpd2[b]} vs ${want}`);
    }
    // a constant image x = 0 costs exactly (0.5 ln 2pi + ln 128)/ln 2 = 8.3257... bits per dimension
    model.setInputs(ws, new Float64Array(x.length), null);
    const r0 = model.forward(ws);
    assert.ok(Math.abs(model.bitsPerDim(ws, r0.logdet)[0] - c0 / Math.LN2) < 1e-12);
    assert.ok(Math.abs(c0 / Math.LN2 - 8.325748064736) < 1e-9);
    model.dispose();
  });
}

// ---------------------------------------------------------------------------------------------------------
// determinism

test('same seed gives identical parameters; different seeds differ; initialisation follows the spec', () => {
  const cfg = { ...base, numClasses: 3 };
  const a = new TarFlow(cfg, { device: 'cpu', seed: 7 });
  const b = new TarFlow(cfg, { device: 'cpu', seed: 7 });
  const c = new TarFlow(cfg, { device: 'cpu', seed: 8 });
  sameParams(a, b, 'same seed');
  sameArray(a.params.flat.toArray(), b.params.flat.toArray(), 'same seed, flat buffer');
  const pa = a.params.flat.toArray(), pc = c.params.flat.toArray();
  let differ = 0;
  for (let i = 0; i < pa.length; i++) if (pa[i] !== pc[i]) differ++;
  assert.ok(differ > 0.5 * a.parameterCount, `seeds 7 and 8 share too many parameters (${differ} differ)`);
  // a re-initialised model matches a fresh one with that seed
  c.initialize(7);
  sameParams(c, a, 're-initialised');
  // spec initialisation: LN weight 1 / bias 0, proj_out weight 0, linear weights in +-1/sqrt(fan_in)
  assert.ok(a.params.get('blocks.0.attn_blocks.0.attention.norm.weight').toArray().every((v) => v === 1));
  assert.ok(a.params.get('blocks.1.attn_blocks.0.mlp.norm.bias').toArray().every((v) => v === 0));
  assert.ok(a.params.get('blocks.1.proj_out.weight').toArray().every((v) => v === 0));
  const fc2 = a.params.get('blocks.0.attn_blocks.0.mlp.main.2.weight').toArray();
  const bound = 1 / Math.sqrt(4 * base.channels);
  assert.ok(fc2.every((v) => Math.abs(v) <= bound) && Math.max(...fc2.map(Math.abs)) > 0.9 * bound);
  const pos = Array.from(a.params.get('blocks.0.pos_embed').toArray());
  const std = Math.sqrt(pos.reduce((p, v) => p + v * v, 0) / pos.length);
  assert.ok(std > 0.008 && std < 0.012, `pos_embed std ${std}, expected 0.01`);
  [a, b, c].forEach((m) => m.dispose());
});

/**
 * Runs in a child process (so that a native crash fails this test instead of killing the runner): forward,
 * backward and a guided reverse at 1, 2 and 5 threads, compared bit for bit; prints a JSON summary.
 */
async function threadDeterminismChild(urls: { model: string; params: string; helpers: string }): Promise<void> {
  const { TarFlow } = await import(urls.model);
  const { ParamSet } = await import(urls.params);
  const { randomizeParams, gaussian } = await import(urls.helpers);
  const model = new TarFlow({ inChannels: 1, imgSize: 8, patchSize: 2, channels: 128, numBlocks: 2, layersPerBlock: 2, numClasses: 4 }, { device: 'cpu', seed: 3 });
  randomizeParams(model, 9);
  const B = 4;
  const ws = model.workspace(B);
  const g = gaussian(5);
  const x = new Float32Array(ws.x.size).map(() => Math.max(-1, Math.min(1, 0.5 * g())));
  const y = Int32Array.of(0, 3, -1, 1);
  const { tokens: T, patchDim: D } = model.shape;
  const z0 = new Float32Array(B * T * D).map(() => g());
  const run = () => {
    model.setInputs(ws, x, y);
    const { loss, logdet } = model.forward(ws);
    const grads = new ParamSet(model.backend, model.config, model.specs, model.dtype);
    model.backward(ws, grads);
    const gr = grads.flat.toArray();
    grads.dispose();
    const zt = new model.backend.Tensor('float32', [B, T, D], z0);
    const out = new model.backend.Tensor('float32', [B, 1, 8, 8]);
    const lab = new model.backend.Tensor('int32', [B], y);
    model.reverse(zt, out, lab, { guidance: 1.5, attnTemp: 0.8 });
    const r: Record<string, ArrayLike<number>> = { loss: [loss], logdet, z: ws.z.toArray(), dx: ws.dx.toArray(), grads: gr, reverse: out.toArray() };
    [zt, out, lab].forEach((t) => t.dispose());
    return r;
  };
  const saved = model.ops.getThreads();
  const results: Record<number, Record<string, ArrayLike<number>>> = {};
  const seen: number[] = [];
  for (const n of [1, 2, 5]) {
    model.ops.setThreads(n);
    seen.push(model.ops.getThreads());
    results[n] = run();
  }
  model.ops.setThreads(saved);
  const mismatches: string[] = [];
  for (const n of [2, 5]) {
    for (const key of Object.keys(results[1])) {
      const a = results[1][key], b = results[n][key];
      let first = -1;
      for (let i = 0; i < a.length && first < 0; i++) if (!Object.is(a[i], b[i])) first = i;
      if (a.length !== b.length || first >= 0) mismatches.push(`${key} at ${n} threads differs from 1 thread (first at element ${first})`);
    }
  }
  let nonzero = 0;
  for (const v of Array.from(results[1].grads)) if (v !== 0) nonzero++;
  const loss = results[1].loss[0];
  process.stdout.write(JSON.stringify({ seen, restored: model.ops.getThreads() === saved, mismatches, nonzero, loss }));
  model.dispose();
}

test('the thread count does not change forward, backward or reverse (bit for bit)', () => {
  const urls = {
    model: new URL('../lib/model.js', import.meta.url).href,
    params: new URL('../lib/params.js', import.meta.url).href,
    helpers: new URL('./helpers.js', import.meta.url).href,
  };
  const code = `(${threadDeterminismChild.toString()})(${JSON.stringify(urls)}).catch((e) => { console.error(e); process.exit(3); });`;
  const child = spawnSync(process.execPath, ['--input-type=module', '-e', code], { encoding: 'utf8', timeout: 60_000 });
  assert.is(child.signal, null,
    `the child process died with ${child.signal} after ops.setThreads (native crash; see the Pool::resize worker generation bug). stderr: ${child.stderr.slice(-2000)}`);
  assert.is(child.status, 0, `child failed: ${child.stderr.slice(-2000)}`);
  const r = JSON.parse(child.stdout) as { seen: number[]; restored: boolean; mismatches: string[]; nonzero: number; loss: number };
  assert.equal(r.seen, [1, 2, 5], 'getThreads does not report what setThreads set');
  assert.ok(r.restored, 'thread count not restored');
  assert.equal(r.mismatches, [], r.mismatches.join('; '));
  assert.ok(r.nonzero > 1000 && Number.isFinite(r.loss), 'the compared run is trivial');
});

// ---------------------------------------------------------------------------------------------------------
// checkpoints

test('checkpoint round trip: parameters, variance, forward output and config', async () => {
  const model = new TarFlow({ ...base, nvp: false, numClasses: 2 }, { device: 'cpu', seed: 12 });
  randomizeParams(model, 13);
  const { tokens: T, patchDim: D } = model.shape;
  model.variance.copyFrom(new Float32Array(T * D).map((_, i) => 0.3 + (i % 7) * 0.2));
  const path = tmpPath('model.safetensors');
  await saveModel(path, model);
  const loaded = await loadModel(path, { device: 'cpu' });
  assert.equal(loaded.config, model.config);
  sameParams(loaded, model, 'loaded');
  sameArray(loaded.variance.toArray(), model.variance.toArray(), 'loaded variance');
  const B = 2;
  const x = Float32Array.from(randomImages(B * 64, 14));
  const y = Int32Array.of(1, -1);
  const fw = (m: TarFlow) => {
    const ws = m.workspace(B);
    m.setInputs(ws, x, y);
    const r = m.forward(ws);
    return { loss: r.loss, z: arr(ws.z) };
  };
  assert.equal(fw(loaded), fw(model));
  // a float64 model loads the same file
  const wide = await loadModel(path, { device: 'cpu', dtype: 'float64' });
  assert.is(wide.dtype, 'float64');
  sameParams(wide, model, 'wide');
  [loaded, wide].forEach((m) => m.dispose());

  // BF16: half the bytes, small rounding error in the weights, var kept exactly
  const pathBf = tmpPath('model-bf16.safetensors');
  await saveModel(pathBf, model, { dtype: 'BF16' });
  assert.ok(fs.statSync(pathBf).size < 0.6 * fs.statSync(path).size, 'BF16 file is not about half the size');
  const bf = await loadModel(pathBf, { device: 'cpu' });
  const a = bf.params.flat.toArray(), w = model.params.flat.toArray();
  let maxRel = 0, changed = 0;
  for (let i = 0; i < w.length; i++) {
    if (w[i] !== 0) maxRel = Math.max(maxRel, Math.abs(a[i] - w[i]) / Math.abs(w[i]));
    if (a[i] !== w[i]) changed++;
  }
  assert.ok(maxRel <= 2 ** -8, `bf16 round trip error ${maxRel} > 2^-8`);
  assert.ok(changed > 0, 'bf16 rounding left every weight unchanged: was it saved as bf16?');
  sameArray(bf.variance.toArray(), model.variance.toArray(), 'bf variance');
  const fb = fw(bf), f0 = fw(model);
  assert.ok(Math.abs(fb.loss - f0.loss) < 0.02 * Math.abs(f0.loss), `bf16 loss ${fb.loss} vs ${f0.loss}`);
  bf.dispose();

  // without metadata: refused unless the caller passes the config
  const bare = tmpPath('bare.safetensors');
  await writeSafetensors(bare, stateDict(model), {});
  await rejectsCode(() => loadModel(bare, { device: 'cpu' }), 'ERR_TARFLOW_CHECKPOINT', /no config in its metadata/);
  const withCfg = await loadModel(bare, { device: 'cpu', config: toReferenceConfig(model.config) });
  sameParams(withCfg, model, 'withCfg');
  sameArray(withCfg.variance.toArray(), model.variance.toArray(), 'withCfg variance');
  withCfg.dispose();
  // the camelCase config is accepted too
  const camel = await loadModel(bare, { device: 'cpu', config: { ...model.config } });
  sameParams(camel, model, 'camel');
  camel.dispose();
  model.dispose();
});

test('a checkpoint whose config is far larger than its tensors is refused before the model is allocated', async () => {
  // A few hundred bytes whose metadata claims a model of 0.8 GB (or 200 GB): its tensors are checked against the
  // config first, so a hostile file cannot make a server reserve memory the file does not hold.
  const ops = getBackend('cpu').ops;
  for (const channels of [1024, 8192]) {
    const config = { in_channels: 1, img_size: 28, patch_size: 4, channels, num_blocks: channels === 1024 ? 4 : 8, layers_per_block: channels === 1024 ? 4 : 8, nvp: true, num_classes: 0 };
    const path = tmpPath(`claims-${channels}.safetensors`);
    await writeSafetensors(path, { var: f32Tensor(new Float32Array(49 * 16), [49, 16]) }, { config: JSON.stringify(config), format: 'tarflow' });
    const before = ops.nativeMemory(true).bytes; // true: the peak starts again from here
    await rejectsCode(() => loadModel(path, { device: 'cpu' }), 'ERR_TARFLOW_CHECKPOINT', /does not match the model config: missing tensor 'blocks\.0\.proj_in\.weight'/);
    assert.ok(ops.nativeMemory().peakBytes - before < 1 << 20, `${channels} channels: ${ops.nativeMemory().peakBytes - before} bytes allocated for a file of ${fs.statSync(path).size}`);
  }
});

test('checkpoint errors: config mismatch, unknown field, truncated file, corrupt header, .pth', async () => {
  const model = new TarFlow({ ...base, numClasses: 2 }, { device: 'cpu', seed: 1 });
  const path = tmpPath('ok.safetensors');
  await saveModel(path, model);
  const ref = toReferenceConfig(model.config);
  const opts = (config: Record<string, unknown>) => ({ device: 'cpu' as const, config });
  await rejectsCode(() => loadModel(path, opts({ ...ref, channels: 128 })), 'ERR_TARFLOW_CHECKPOINT', /does not match the model config: 'blocks\.0\..*' has shape \[64(,64)?\] but the config needs \[128(,128)?\].*and \d+ more/);
  await rejectsCode(() => loadModel(path, opts({ ...ref, num_blocks: 3 })), 'ERR_TARFLOW_CHECKPOINT', /missing tensor 'blocks\.2\./);
  await rejectsCode(() => loadModel(path, opts({ ...ref, num_blocks: 1 })), 'ERR_TARFLOW_CHECKPOINT', /unexpected tensor 'blocks\.1\./);
  await rejectsCode(() => loadModel(path, opts({ ...ref, num_classes: 0 })), 'ERR_TARFLOW_CHECKPOINT', /unexpected tensor 'blocks\.0\.class_embed'/);
  await rejectsCode(() => loadModel(path, opts({ ...ref, nvp: false })), 'ERR_TARFLOW_CHECKPOINT', /'blocks\.0\.proj_out\.bias' has shape \[8\] but the config needs \[4\]/);
  await rejectsCode(() => loadModel(path, opts({ ...ref, dropout: 0.1 })), 'ERR_TARFLOW_CONFIG', /config: expected only the fields in_channels, .*, got the field "dropout"/);
  throwsCode(() => fromReferenceConfig({ ...ref, img_sizes: 8 }), 'ERR_TARFLOW_CONFIG', /img_sizes/);

  const bytes = fs.readFileSync(path);
  const truncated = tmpPath('truncated.safetensors');
  fs.writeFileSync(truncated, bytes.subarray(0, Math.floor(bytes.length / 2)));
  await rejectsCode(() => loadModel(truncated, { device: 'cpu' }), 'ERR_TARFLOW_FILE_FORMAT', /truncated/);
  const tiny = tmpPath('tiny.safetensors');
  fs.writeFileSync(tiny, bytes.subarray(0, 5));
  await rejectsCode(() => loadModel(tiny, { device: 'cpu' }), 'ERR_TARFLOW_FILE_FORMAT', /shorter than the 8-byte header/);
  const corrupt = tmpPath('corrupt.safetensors');
  const bad = Buffer.from(bytes);
  bad[8] = 'X'.charCodeAt(0); // the header's opening '{'
  fs.writeFileSync(corrupt, bad);
  await rejectsCode(() => loadModel(corrupt, { device: 'cpu' }), 'ERR_TARFLOW_FILE_FORMAT', /header does not start with '\{'/);
  const badJson = Buffer.from(bytes);
  assert.is(badJson[9], '"'.charCodeAt(0));
  badJson[9] = 'x'.charCodeAt(0); // {"__metadata__" -> {x__metadata__": invalid JSON
  const corrupt2 = tmpPath('corrupt2.safetensors');
  fs.writeFileSync(corrupt2, badJson);
  await rejectsCode(() => loadModel(corrupt2, { device: 'cpu' }), 'ERR_TARFLOW_FILE_FORMAT', /header is not valid JSON/);
  const garbageCfg = tmpPath('garbage-config.safetensors');
  await writeSafetensors(garbageCfg, stateDict(model), { config: '{not json' });
  await rejectsCode(() => loadModel(garbageCfg, { device: 'cpu' }), 'ERR_TARFLOW_CHECKPOINT', /metadata 'config': expected JSON, got invalid JSON/);

  for (const ext of ['pth', 'pt', 'PTH']) {
    const p = tmpPath(`model.${ext}`);
    fs.writeFileSync(p, bytes); // even a valid safetensors payload is refused by name: never unpickle
    await rejectsCode(() => loadModel(p, { device: 'cpu' }), 'ERR_TARFLOW_CHECKPOINT', /pickled PyTorch file/);
  }
  const missing = tmpPath('missing.safetensors');
  await rejectsCode(() => loadModel(missing, { device: 'cpu' }), 'ERR_TARFLOW_INVALID_ARGUMENT', /missing\.safetensors.*does not exist/);
  model.dispose();
});

// ---------------------------------------------------------------------------------------------------------
// bad input

test('bad config: patch size, width, unknown fields, dtype, device', () => {
  throwsCode(() => new TarFlow({ ...base, patchSize: 3 }), 'ERR_TARFLOW_CONFIG', /config\.patchSize: expected a divisor of config\.imgSize \(8\), got 3/);
  throwsCode(() => new TarFlow({ ...base, channels: 96 }), 'ERR_TARFLOW_CONFIG', /config\.channels: expected a multiple of config\.headDim \(64\), got 96/);
  throwsCode(() => new TarFlow({ ...base, numBlocks: 0 }), 'ERR_TARFLOW_CONFIG', /config\.numBlocks: expected a positive integer, got 0/);
  throwsCode(() => new TarFlow({ ...base, patchSize: 8 }), 'ERR_TARFLOW_CONFIG', /at least 2 patches/);
  throwsCode(() => new TarFlow({ ...base, numClasses: -1 }), 'ERR_TARFLOW_CONFIG', /numClasses/);
  throwsCode(() => fromReferenceConfig({ ...toReferenceConfig({ ...base, nvp: true, numClasses: 0, headDim: 64, expansion: 4 }), heads: 2 }), 'ERR_TARFLOW_CONFIG', /got the field "heads"/);
  throwsCode(() => new TarFlow(base, { device: 'cpu', dtype: 'float16' as FloatDType }), 'ERR_TARFLOW_INVALID_ARGUMENT', /dtype: expected one of 'float32', 'float64', got "float16"/);
  throwsCode(() => new TarFlow(base, { device: 'tpu' as 'cpu' }), 'ERR_TARFLOW_INVALID_ARGUMENT', /device: expected one of 'auto', 'cpu', 'cuda', got "tpu"/);
});

test('bad inputs: image size, labels, dtype mix and shapes in native ops; the process survives', () => {
  const model = new TarFlow({ ...base, numClasses: 3 }, { device: 'cpu', seed: 2 });
  const ws = model.workspace(2);
  const good = new Float32Array(2 * 64);
  throwsCode(() => model.setInputs(ws, new Float32Array(2 * 63)), 'ERR_TARFLOW_SHAPE', /images: expected 2 x 1 x 8 x 8 = 128 values \(pixels scaled to \[-1, 1\]\), got 126/);
  throwsCode(() => model.setInputs(ws, good, Int32Array.of(0, 3)), 'ERR_TARFLOW_INVALID_ARGUMENT', /labels\[1\]: expected a class index in 0\.\.2 \(the model has 3 classes\) or -1 for none, got 3/);
  throwsCode(() => model.setInputs(ws, good, Int32Array.of(-2, 0)), 'ERR_TARFLOW_INVALID_ARGUMENT', /labels\[0\]: expected .*, got -2/);
  throwsCode(() => model.setInputs(ws, good, Int32Array.of(0)), 'ERR_TARFLOW_SHAPE', /labels: expected 2 labels \(one per image\), got 1/);
  // a label written past setLabels is still caught by the native op
  model.setInputs(ws, good, Int32Array.of(0, 1));
  ws.labels.copyFrom(Int32Array.of(0, 7));
  throwsCode(() => model.forward(ws), 'ERR_TARFLOW_INVALID_ARGUMENT', /label 7 .*out of range/);
  model.setInputs(ws, good, Int32Array.of(0, 1));

  const ops = model.ops;
  const T = model.backend.Tensor;
  const x32 = new T('float32', [4, 8]), w64 = new T('float64', [6, 8]), y32 = new T('float32', [4, 6]);
  throwsCode(() => ops.linear(y32, x32, w64, null, false), 'ERR_TARFLOW_DTYPE', /float64.*share a dtype|share a dtype/);
  const w32 = new T('float32', [6, 7]);
  throwsCode(() => ops.linear(y32, x32, w32, null, false), 'ERR_TARFLOW_SHAPE', /input size 7/);
  throwsCode(() => ops.attention(new T('float32', [1, 4, 8]), new T('float32', [1, 1, 4, 4]), new T('float32', [1, 4, 25]), 1, 1), 'ERR_TARFLOW_SHAPE', /qkv must be \[B, T, 3W\]/);
  throwsCode(() => ops.patchify(new T('float32', [1, 4, 4]), new T('float32', [1, 1, 6, 6]), 4), 'ERR_TARFLOW_SHAPE', /does not divide/);
  throwsCode(() => x32.copyFrom(new Float64Array(32)), 'ERR_TARFLOW_DTYPE', /needs a Float32Array, got a Float64Array/);
  throwsCode(() => x32.copyFrom(new Float32Array(31)), 'ERR_TARFLOW_SHAPE', /32 elements, the array has 31/);
  throwsCode(() => ops.axpby(x32, x32, 'a' as unknown as number, 0), 'ERR_TARFLOW_INVALID_ARGUMENT', /alpha/);
  throwsCode(() => ops.layerNorm(x32, new T('float32', [4]), new T('float32', [4]), x32, new T('float32', [7]), new T('float32', [8]), 1e-5), 'ERR_TARFLOW_SHAPE', /weight/);
  // a float32 latent on a float64 model is refused before anything runs
  const m64 = new TarFlow(base, { device: 'cpu', dtype: 'float64', seed: 1 });
  const z32 = new T('float32', [1, 16, 4]), out64 = new T('float64', [1, 1, 8, 8]);
  throwsCode(() => m64.reverse(z32, out64, null), 'ERR_TARFLOW_DTYPE');
  throwsCode(() => m64.reverse(new T('float64', [1, 16, 4]), out64, null, { guidance: -1 }), 'ERR_TARFLOW_INVALID_ARGUMENT', /guidance: expected a finite number >= 0, got -1/);
  m64.dispose();
  // disposed tensors
  const gone = new T('float32', [4, 8]);
  gone.dispose();
  throwsCode(() => ops.copy(x32, gone), 'ERR_TARFLOW_DISPOSED', /disposed tensor/);

  // after all that, the model still works
  const r = model.forward(ws);
  assert.ok(Number.isFinite(r.loss));
  [x32, w64, y32, w32].forEach((t) => t.dispose());

  // a disposed model refuses work
  model.dispose();
  assert.ok(model.disposed);
  throwsCode(() => model.forward(ws), 'ERR_TARFLOW_DISPOSED', /disposed/);
  throwsCode(() => model.backward(ws, null), 'ERR_TARFLOW_DISPOSED');
  throwsCode(() => model.workspace(2), 'ERR_TARFLOW_DISPOSED');
  model.dispose(); // idempotent
});

test('tensor methods, accessors and the constructor fail with TarflowErrors; tensors the ops make are still instances', async () => {
  const model = new TarFlow(base, { device: 'cpu', seed: 1 });
  const T = model.backend.Tensor;
  const t = new T('float32', [4]);
  assert.ok(t.view(0, [2]) instanceof T, 'a view is an instance of the wrapped class');
  const isTarflow = (fn: () => unknown, code: TarflowErrorCode, pattern: RegExp) => {
    const err = throwsCode(fn, code, pattern);
    assert.instance(err, TarflowError);
  };
  isTarflow(() => new T('float16' as never, [2]), 'ERR_TARFLOW_DTYPE', /^new Tensor: unknown dtype 'float16'/);
  isTarflow(() => t.copyFrom(new Float32Array(3)), 'ERR_TARFLOW_SHAPE', /^copyFrom: .* 4 elements, the array has 3/);
  isTarflow(() => t.view(3, [2]), 'ERR_TARFLOW_SHAPE', /^view: /);
  const shape = Object.getOwnPropertyDescriptor(Object.getPrototypeOf(t), 'shape')!.get!;
  isTarflow(() => shape.call({}), 'ERR_TARFLOW_INVALID_ARGUMENT', /not a Tensor/);
  t.dispose();
  isTarflow(() => t.toArray(), 'ERR_TARFLOW_DISPOSED', /^toArray: the tensor was disposed/);
  // The checkpoint writers check the model first.
  model.dispose();
  isTarflow(() => stateDict(model), 'ERR_TARFLOW_DISPOSED', /this model was disposed/);
  const err = await rejectsCode(() => saveModel(nodePath.join(tmpRoot, 'gone.safetensors'), model), 'ERR_TARFLOW_DISPOSED', /this model was disposed/);
  assert.instance(err, TarflowError);
  assert.not.ok(fs.existsSync(nodePath.join(tmpRoot, 'gone.safetensors')));
});

test('NaN or Inf in the data is refused with a message naming the image', () => {
  const model = new TarFlow(base, { device: 'cpu', seed: 2 });
  const ws = model.workspace(2);
  const x = new Float32Array(2 * 64).fill(0.25);
  model.setInputs(ws, x);
  assert.ok(Number.isFinite(model.forward(ws).loss));
  for (const bad of [NaN, Infinity]) {
    x[70] = bad;
    throwsCode(() => model.setInputs(ws, x), 'ERR_TARFLOW_DATA', /images\[70\]: expected a finite value \(pixels scaled to \[-1, 1\]\), got (NaN|Infinity); value 6 of image 1/);
  }
  // The op table still sees non-finite values if a caller writes them directly: the loss says so.
  const direct = new Float32Array(2 * 64).fill(0.25);
  direct[3] = NaN;
  ws.x.copyFrom(direct);
  assert.not.ok(Number.isFinite(model.forward(ws).loss));
  model.dispose();
});

test.after(() => fs.rmSync(tmpRoot, { recursive: true, force: true }));
test.run();
