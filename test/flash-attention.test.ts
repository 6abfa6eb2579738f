/**
 * Fused causal attention (flashAttention / flashAttentionBackward) without a GPU: the CUDA kernels' per-thread
 * logic run on the CPU for every thread (test/native/flash_tile_test.cc), and the CPU reference against the unfused
 * attention ops: the same out and dqkv in float64, float32 and bf16, a log-sum-exp that matches the logits, and
 * coded errors for bad arguments. The finite-difference check of the backward is in gradcheck.test.ts; the GPU's
 * kernels are compared with this reference in cuda-parity.test.ts.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { getBackend, type DType, type MatmulOptions, type Tensor } from '../lib/backend.js';
import { TarFlow } from '../lib/model.js';
import { errorCode as code, gaussian, modelErrors, relError, runNativeCheck } from './helpers.js';

const cpu = getBackend('cpu');

test('the fused attention kernels\' per-thread logic, run on the CPU for every thread against naive attention', () => {
  const failure = runNativeCheck('flash_tile_test');
  assert.ok(failure === null, failure ?? '');
});

function randn(n: number, seed: number, scale = 1): number[] {
  const g = gaussian(seed);
  return Array.from({ length: n }, () => scale * g());
}

/** out, dqkv and lse (or probs) of one form of attention on the CPU. */
function run(fused: boolean, dtype: DType, [B, Tn, W, H]: number[], temp: number, options?: MatmulOptions) {
  const make = (shape: number[], data?: number[]): Tensor =>
    new cpu.Tensor(dtype, shape, data && (dtype === 'float64' ? Float64Array.from(data) : Float32Array.from(data)));
  const qkv = make([B, Tn, 3 * W], randn(B * Tn * 3 * W, 7, 1.5)), dout = make([B, Tn, W], randn(B * Tn * W, 8));
  const out = make([B, Tn, W]), dqkv = make([B, Tn, 3 * W]);
  const saved = make(fused ? [B, H, Tn] : [B, H, Tn, Tn]);
  if (fused) {
    cpu.ops.flashAttention(out, saved, qkv, H, temp, options);
    cpu.ops.flashAttentionBackward(dqkv, dout, qkv, out, saved, H, temp, options);
  } else {
    cpu.ops.attention(out, saved, qkv, H, temp, options);
    cpu.ops.attentionBackward(dqkv, dout, qkv, saved, H, temp, options);
  }
  const result = { out: out.toArray(), dqkv: dqkv.toArray(), saved: saved.toArray(), qkv: qkv.toArray() };
  [qkv, dout, out, dqkv, saved].forEach((t) => t.dispose());
  return result;
}

// T = 70 and 200 span several of the GEMM's 14-row panels and 32-column tiles along attention.cc's causal triangles,
// the last ones partial.
const shapes = [[2, 1, 64, 1], [2, 19, 128, 2], [1, 70, 192, 3], [3, 7, 12, 3], [1, 200, 16, 2]];

for (const [dtype, precision, tol] of [['float64', 'fp32', 1e-13], ['float32', 'fp32', 2e-6], ['float32', 'bf16', 1e-2]] as const) {
  test(`flashAttention and its backward equal attention's (${dtype}, ${precision})`, () => {
    for (const shape of shapes)
      for (const temp of [0.7, 1]) {
        const a = run(true, dtype, shape, temp, { precision }), b = run(false, dtype, shape, temp, { precision });
        for (const name of ['out', 'dqkv'] as const) {
          const err = relError(a[name], b[name]);
          assert.ok(err <= tol, `${name} ${shape} temp ${temp}: relative error ${err}`);
        }
      }
  });
}

test('lse is the log-sum-exp of each row\'s causal logits q.k / (sqrt(hd) temp)', () => {
  const [B, Tn, W, H, temp] = [2, 9, 8, 2, 0.8];
  const r = run(true, 'float64', [B, Tn, W, H], temp);
  const hd = W / H;
  for (let b = 0; b < B; b++)
    for (let h = 0; h < H; h++)
      for (let i = 0; i < Tn; i++) {
        let sum = 0;
        for (let j = 0; j <= i; j++) {
          let s = 0;
          for (let c = 0; c < hd; c++) s += r.qkv[(b * Tn + i) * 3 * W + h * hd + c] * r.qkv[(b * Tn + j) * 3 * W + W + h * hd + c];
          sum += Math.exp(s / (Math.sqrt(hd) * temp));
        }
        const got = r.saved[(b * H + h) * Tn + i];
        assert.ok(Math.abs(got - Math.log(sum)) < 1e-12 * Math.max(1, Math.abs(got)), `lse[${b},${h},${i}] = ${got}, want ${Math.log(sum)}`);
      }
});

test('bad flashAttention arguments are refused with coded errors', () => {
  const t = (shape: number[], dtype: DType = 'float32') => new cpu.Tensor(dtype, shape);
  const [B, Tn, W, H] = [2, 5, 8, 2];
  const qkv = t([B, Tn, 3 * W]), out = t([B, Tn, W]), lse = t([B, H, Tn]), dqkv = t([B, Tn, 3 * W]);
  assert.is(code(() => cpu.ops.flashAttention(out, t([B, H, Tn, Tn]), qkv, H, 1)), 'ERR_TARFLOW_SHAPE');
  assert.is(code(() => cpu.ops.flashAttention(out, lse, qkv, 3, 1)), 'ERR_TARFLOW_INVALID_ARGUMENT');
  assert.is(code(() => cpu.ops.flashAttention(out, t([B, H, Tn], 'float64'), qkv, H, 1)), 'ERR_TARFLOW_DTYPE');
  assert.is(code(() => cpu.ops.flashAttention(out, lse, qkv, H, 1, { precision: 'fp16' as 'bf16' })), 'ERR_TARFLOW_INVALID_ARGUMENT');
  assert.is(code(() => cpu.ops.flashAttentionBackward(dqkv, out, qkv, out, t([B, H, Tn + 1]), H, 1)), 'ERR_TARFLOW_SHAPE');
  assert.is(code(() => cpu.ops.flashAttentionBackward(dqkv, t([B, Tn, W + 1]), qkv, out, lse, H, 1)), 'ERR_TARFLOW_SHAPE');
  assert.is(code(() => cpu.ops.flashAttentionBackward(t([B, Tn, W]), out, qkv, out, lse, H, 1)), 'ERR_TARFLOW_SHAPE');
  [qkv, out, lse, dqkv].forEach((x) => x.dispose());
});

test('a model with fused attention equals the unfused one (CPU): latents, log-dets, loss, gradients, dL/dx', () => {
  const cfg = { inChannels: 1, imgSize: 8, patchSize: 2, channels: 128, numBlocks: 2, layersPerBlock: 2, numClasses: 3 };
  for (const [precision, tol] of [['fp32', 1e-5], ['bf16', 2e-2]] as const) {
    const errors = modelErrors(cfg, 3, { device: 'cpu', precision, fusedAttention: true }, { device: 'cpu', precision, fusedAttention: false });
    for (const [name, err] of Object.entries(errors)) assert.ok(err < tol, `${precision} ${name}: relative error ${err}`);
  }
});

test('fused attention saves lse [B,H,T] instead of probs [B,H,T,T] in the workspace; off by default on the CPU', () => {
  const cfg = { inChannels: 1, imgSize: 8, patchSize: 2, channels: 128, numBlocks: 2, layersPerBlock: 2 };
  const bytes = (fusedAttention?: boolean) => {
    const model = new TarFlow(cfg, { device: 'cpu', noInit: true, fusedAttention });
    const before = cpu.ops.nativeMemory().bytes;
    model.workspace(4);
    const used = cpu.ops.nativeMemory().bytes - before;
    assert.is(model.fusedAttention, fusedAttention ?? false);
    model.dispose();
    return used;
  };
  const [B, H, T, layers] = [4, 2, 16, 4];
  assert.is(bytes(false) - bytes(true), layers * B * H * (T * T - T) * 4);
  assert.is(bytes(), bytes(false));
  assert.throws(() => new TarFlow(cfg, { device: 'cpu', fusedAttention: 'yes' as unknown as boolean }), (e: { code?: string }) => e.code === 'ERR_TARFLOW_INVALID_ARGUMENT');
});

test.run();
