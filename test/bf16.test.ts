/**
 * bf16 mixed precision without a GPU: the index logic of the two tensor-core GEMMs (mma.sync, and wgmma on sm_90a),
 * run on the CPU for every thread (test/native/mma_tile_test.cc, wgmma_tile_test.cc); the CPU backend's reference
 * kernel, which is the reference for the GPU's bf16 results (bf16-rounded inputs, fp32 sums: bit for bit the float32
 * product of rounded inputs); its fast kernels (AMX, AVX-512 BF16: native/cpu/gemm_bf16.cc) against the reference,
 * on CPUs that have them; the fused GELU output;
 * and a whole model in bf16 against float32. The GPU's bf16 kernels are compared with all of this in
 * cuda-parity.test.ts.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { readFileSync } from 'node:fs';
import { getBackend, type MatmulOptions, type Tensor } from '../lib/backend.js';
import { TarFlow } from '../lib/model.js';
import { errorCode as code, gaussian, modelErrors, relError, roundBf16, runNativeCheck, withEnv } from './helpers.js';

const cpu = getBackend('cpu');
const bf16: MatmulOptions = { precision: 'bf16' };

/** fn() with the CPU's bf16 kernel chosen by TARFLOW_CPU_GEMM (read by every bf16 product). */
const withCpuGemm = <R>(kind: string, fn: () => R): R => withEnv('TARFLOW_CPU_GEMM', kind, fn);

/** The CPU's fast bf16 kernels, each with the /proc/cpuinfo flags of its instructions (their packing also needs AVX-512F, BW). */
const FAST_KERNELS = { amx: ['amx_bf16', 'amx_tile'], avx512bf16: ['avx512_bf16'] } as const;
type FastKernel = keyof typeof FAST_KERNELS;

/** Whether the CPU reports a kernel's instructions (Linux x64 only; elsewhere the fast kernels are not built). */
function cpuHas(kernel: FastKernel): boolean {
  try {
    const flags = readFileSync('/proc/cpuinfo', 'utf8');
    return process.arch === 'x64' && [...FAST_KERNELS[kernel], 'avx512f', 'avx512bw'].every((f) => new RegExp(`\\b${f}\\b`).test(flags));
  } catch {
    return false;
  }
}
/** What TARFLOW_CPU_GEMM=<kernel> gives here: the kernel's name where it runs, else the coded error. */
const named = (kernel: FastKernel): string | (Error & { code?: string }) => withCpuGemm(kernel, () => {
  try {
    return cpu.bf16GemmKernel!();
  } catch (e) {
    return e as Error & { code?: string };
  }
});
const usable = (Object.keys(FAST_KERNELS) as FastKernel[]).filter((k) => typeof named(k) === 'string');

test('the bf16 GEMM kernel\'s per-thread index logic, run on the CPU against the PTX fragment layouts', () => {
  const failure = runNativeCheck('mma_tile_test');
  assert.ok(failure === null, failure ?? '');
});

test('the sm_90a wgmma GEMM kernel\'s per-thread index logic, run on the CPU against the PTX descriptor and fragment layouts', () => {
  const failure = runNativeCheck('wgmma_tile_test');
  assert.ok(failure === null, failure ?? '');
});

function randn(n: number, seed: number, scale = 1): Float32Array {
  const g = gaussian(seed);
  return Float32Array.from({ length: n }, () => scale * g());
}

const T = (shape: number[], data?: Float32Array): Tensor => new cpu.Tensor('float32', shape, data);
const same = (a: Tensor, b: Tensor, what: string) => assert.equal(Array.from(a.toArray()), Array.from(b.toArray()), what);

test('the reference kernel: linear and linearBackward in bf16 are the float32 products of bf16-rounded inputs, bit for bit', () => withCpuGemm('reference', () => {
  const [B, Tn, K, N] = [3, 7, 40, 24];
  const x = randn(B * Tn * K, 1), w = randn(N * K, 2, 0.2), b = randn(N, 3), dy = randn(B * Tn * N, 4), prior = randn(B * Tn * N, 5);
  for (const accumulate of [false, true]) {
    const y = T([B, Tn, N], prior), ref = T([B, Tn, N], prior);
    cpu.ops.linear(y, T([B, Tn, K], x), T([N, K], w), T([N], b), accumulate, bf16);
    cpu.ops.linear(ref, T([B, Tn, K], roundBf16(x)), T([N, K], roundBf16(w)), T([N], b), accumulate);
    same(y, ref, `linear accumulate=${accumulate}`);
  }
  const dx = T([B, Tn, K]), dw = T([N, K]), db = T([N]);
  cpu.ops.linearBackward(dx, dw, db, T([B, Tn, N], dy), T([B, Tn, K], x), T([N, K], w), false, bf16);
  const rdx = T([B, Tn, K]), rdw = T([N, K]), rdb = T([N]);
  cpu.ops.linearBackward(rdx, rdw, null, T([B, Tn, N], roundBf16(dy)), T([B, Tn, K], roundBf16(x)), T([N, K], roundBf16(w)), false);
  cpu.ops.linearBackward(null, null, rdb, T([B, Tn, N], dy), T([B, Tn, K], x), T([N, K], w), false);  // the bias gradient stays fp32
  same(dx, rdx, 'dx');
  same(dw, rdw, 'dweight');
  same(db, rdb, 'dbias');
  // The rounding happened: bf16 differs from float32 at about 2^-9.
  const f32 = T([B, Tn, K]);
  cpu.ops.linearBackward(f32, null, null, T([B, Tn, N], dy), T([B, Tn, K], x), T([N, K], w), false);
  const err = relError(dx.toArray(), f32.toArray());
  assert.ok(err > 1e-4 && err < 1e-2, `bf16 vs float32 dx: relative error ${err}`);
}));

test('TARFLOW_CPU_GEMM picks the bf16 kernel: auto takes AMX, else AVX-512 BF16, where the CPU has it; a named kernel insists; other values are refused', () => {
  assert.is(withCpuGemm('reference', () => cpu.bf16GemmKernel!()), 'reference');
  assert.is(withCpuGemm('auto', () => cpu.bf16GemmKernel!()), usable[0] ?? 'reference', `usable here: ${usable.join(', ') || 'none'}`);
  for (const kernel of Object.keys(FAST_KERNELS) as FastKernel[]) {
    const err = named(kernel);
    if (typeof err === 'string') {
      assert.is(err, kernel, `TARFLOW_CPU_GEMM=${kernel} ran another kernel`);
      assert.ok(cpuHas(kernel), `${kernel} chosen on a CPU that does not report its instructions`);
      continue;
    }
    assert.is(err.code, 'ERR_TARFLOW_DEVICE');
    assert.match(err.message, new RegExp(`TARFLOW_CPU_GEMM=${kernel}: .*\\(use auto or reference\\)`));
    // On a CPU with the instructions only the operating system may refuse them; a failed self-check against the
    // reference is a bug.
    if (cpuHas(kernel)) assert.match(err.message, /operating system|kernel did not grant/, err.message);
  }
  const x = T([2, 4]), w = T([3, 4]), y = T([2, 3]);
  assert.is(withCpuGemm('fast', () => code(() => cpu.bf16GemmKernel!())), 'ERR_TARFLOW_INVALID_ARGUMENT');
  assert.is(withCpuGemm('fast', () => code(() => cpu.ops.linear(y, x, w, null, false, bf16))), 'ERR_TARFLOW_INVALID_ARGUMENT');
  // float32 products never consult it
  assert.is(withCpuGemm('fast', () => code(() => cpu.ops.linear(y, x, w, null, false))), 'none');
});

// AMX and AVX-512 BF16 sum the same exact bf16 products in their own orders: results within fp32 rounding of the
// reference, and still
// independent of the thread count and of the other rows of the batch. Shapes with tails in M, N and K (16-row tiles,
// 32-wide K steps), the epilogues, and every transpose (linear: B transposed; dx: neither; dweight: A transposed;
// attention's backward: the remaining one).
for (const kernel of Object.keys(FAST_KERNELS) as FastKernel[]) test(`the ${kernel} kernel (where the CPU has it) is within fp32 rounding of the reference, whatever the threads or the batch`, () => {
  if (!usable.includes(kernel)) return;  // the test above checked why
  const both = (fn: () => Float32Array[]) => [withCpuGemm(kernel, fn), withCpuGemm('reference', fn)];
  const close = (a: Float32Array[], b: Float32Array[], what: string, tol = 1e-5) => a.forEach((v, i) => {
    const err = relError(v, b[i]);
    assert.ok(err < tol, `${what} output ${i}: ${kernel} vs reference relative error ${err}`);
  });
  for (const [M, N, K] of [[1, 1, 1], [5, 17, 33], [77, 40, 70], [300, 520, 129]]) {
    const x = randn(M * K, 21), w = randn(N * K, 22, 0.3), b = randn(N, 23), dy = randn(M * N, 24), prior = randn(M * N, 25), u = randn(M * K, 26);
    const products = () => {
      const y = T([M, N], prior), act = T([M, N]), dx = T([M, K]), dw = T([N, K], randn(N * K, 27)), db = T([N]);
      cpu.ops.linear(y, T([M, K], x), T([N, K], w), T([N], b), true, { precision: 'bf16', gelu: act });
      cpu.ops.linearBackward(dx, dw, db, T([M, N], dy), T([M, K], x), T([N, K], w), false, { precision: 'bf16', geluInput: T([M, K], u) });
      return [y, act, dx, dw, db].map((t) => t.toArray() as Float32Array);
    };
    const [fast, ref] = both(products);
    close(fast, ref, `${M}x${N}x${K}`);
    const threads = cpu.ops.getThreads();
    cpu.ops.setThreads(1);
    try {
      withCpuGemm(kernel, products).forEach((v, i) => assert.equal(Array.from(v), Array.from(fast[i]), `${M}x${N}x${K} output ${i}, one thread`));
    } finally {
      cpu.ops.setThreads(threads);
    }
  }
  // A row's result does not depend on the rows beside it: the first 3 rows alone give the same bits.
  const [M, N, K] = [70, 48, 100];
  const x = randn(M * K, 31), w = randn(N * K, 32, 0.3);
  x[K * 5] = NaN;  // a NaN in row 5 stays in row 5
  const rows = (m: number) => withCpuGemm(kernel, () => {
    const y = T([m, N]);
    cpu.ops.linear(y, T([m, K], x.subarray(0, m * K)), T([N, K], w), null, false, bf16);
    return y.toArray() as Float32Array;
  });
  const all = rows(M), three = rows(3);
  assert.equal(Array.from(three), Array.from(all.subarray(0, 3 * N)), 'rows 0-2 alone vs in a batch of 70');
  assert.ok(all.subarray(5 * N, 6 * N).every(Number.isNaN) && all.subarray(6 * N).every(Number.isFinite), 'NaN confined to its row');
  // attention: products with A transposed and with neither operand transposed
  const [B, Tn, W, H] = [2, 37, 128, 2];
  const qkv = randn(B * Tn * 3 * W, 33), dout = randn(B * Tn * W, 34);
  const attention = () => {
    const out = T([B, Tn, W]), probs = T([B, H, Tn, Tn]), dqkv = T([B, Tn, 3 * W]);
    cpu.ops.attention(out, probs, T([B, Tn, 3 * W], qkv), H, 0.8, bf16);
    cpu.ops.attentionBackward(dqkv, T([B, Tn, W], dout), T([B, Tn, 3 * W], qkv), probs, H, 0.8, bf16);
    return [out, probs, dqkv].map((t) => t.toArray() as Float32Array);
  };
  // Attention rounds its fp32 intermediates (P, dS) to bf16 before their products, so a last-bit difference in the
  // logits can move one to the neighbouring bf16 (2^-9 relative): the tolerance of the GPU's attention (1e-3).
  const [fast, ref] = both(attention);
  close(fast, ref, 'attention', 1e-3);
});

test('linear with a gelu output equals linear then gelu, in both precisions', () => {
  const [M, K, N] = [9, 16, 20];
  const x = T([M, K], randn(M * K, 6)), w = T([N, K], randn(N * K, 7, 0.3)), b = T([N], randn(N, 8));
  for (const precision of ['fp32', 'bf16'] as const) {
    const y = T([M, N]), act = T([M, N]), y2 = T([M, N]), act2 = T([M, N]);
    cpu.ops.linear(y, x, w, b, false, { precision, gelu: act });
    cpu.ops.linear(y2, x, w, b, false, { precision });
    cpu.ops.gelu(act2, y2);
    same(y, y2, `${precision} pre-activation`);
    same(act, act2, `${precision} activation`);
  }
});

// The MLP's backward: fc2's dx goes through the GELU in the product's epilogue, where a separate geluBackward pass
// used to; the same operations in the same order, so the same bits. Shapes span several tiles and threads, and the
// middle one two K blocks of the dx product (N = 520 > the CPU GEMM's block of 384): the epilogue runs after the last.
test('linearBackward with geluInput equals linearBackward then geluBackward, bit for bit', () => {
  for (const [M, N, K] of [[9, 16, 20], [300, 520, 70], [131, 1, 33]]) {
    for (const dtype of ['float32', 'float64'] as const) {
      for (const precision of dtype === 'float32' ? ['fp32', 'bf16'] as const : ['fp32'] as const) {
        const mk = (shape: number[], seed: number, scale = 1) => {
          const v = randn(shape.reduce((a, b) => a * b, 1), seed, scale);
          return new cpu.Tensor(dtype, shape, dtype === 'float64' ? Float64Array.from(v) : v);
        };
        const dy = mk([M, N], 11), x = mk([M, K], 12), w = mk([N, K], 13, 0.3), u = mk([M, K], 14, 2);
        const fused = new cpu.Tensor(dtype, [M, K]), dw1 = new cpu.Tensor(dtype, [N, K]), db1 = new cpu.Tensor(dtype, [N]);
        cpu.ops.linearBackward(fused, dw1, db1, dy, x, w, false, { precision, geluInput: u });
        const plain = new cpu.Tensor(dtype, [M, K]), dw2 = new cpu.Tensor(dtype, [N, K]), db2 = new cpu.Tensor(dtype, [N]);
        cpu.ops.linearBackward(plain, dw2, db2, dy, x, w, false, { precision });
        cpu.ops.geluBackward(plain, plain, u);
        const what = `${dtype} ${precision} ${M}x${N}x${K}`;
        same(fused, plain, `dx ${what}`);
        same(dw1, dw2, `dweight ${what}`);
        same(db1, db2, `dbias ${what}`);
        [dy, x, w, u, fused, dw1, db1, plain, dw2, db2].forEach((t) => t.dispose());
      }
    }
  }
  const t = (shape: number[]) => new cpu.Tensor('float32', shape);
  const [dx, dy, x, w] = [t([4, 3]), t([4, 5]), t([4, 3]), t([5, 3])];
  assert.is(code(() => cpu.ops.linearBackward(dx, null, null, dy, x, w, true, { geluInput: x })), 'ERR_TARFLOW_INVALID_ARGUMENT', 'with accumulateDx');
  assert.is(code(() => cpu.ops.linearBackward(null, null, null, dy, x, w, false, { geluInput: x })), 'ERR_TARFLOW_INVALID_ARGUMENT', 'without dx');
  assert.is(code(() => cpu.ops.linearBackward(dx, null, null, dy, x, w, false, { geluInput: t([4, 4]) })), 'ERR_TARFLOW_SHAPE', 'wrong shape');
  assert.is(code(() => cpu.ops.linear(dy, x, w, null, false, { geluInput: x } as never)), 'ERR_TARFLOW_INVALID_ARGUMENT', 'linear has none');
});

test('attention and its backward in bf16 stay within bf16 rounding of float32', () => {
  const [B, Tn, W, H] = [2, 19, 128, 2];
  const qkv = T([B, Tn, 3 * W], randn(B * Tn * 3 * W, 9)), dout = T([B, Tn, W], randn(B * Tn * W, 10));
  const run = (options?: MatmulOptions) => {
    const out = T([B, Tn, W]), probs = T([B, H, Tn, Tn]), dqkv = T([B, Tn, 3 * W]);
    cpu.ops.attention(out, probs, qkv, H, 0.8, options);
    cpu.ops.attentionBackward(dqkv, dout, qkv, probs, H, 0.8, options);
    return [out.toArray(), probs.toArray(), dqkv.toArray()];
  };
  const a = run(bf16), b = run();
  ['out', 'probs', 'dqkv'].forEach((name, i) => {
    const err = relError(a[i], b[i]);
    assert.ok(err > 1e-5 && err < 2e-2, `${name}: bf16 vs float32 relative error ${err}`);
  });
});

test('bad precision options are refused with a coded error', () => {
  const x = T([2, 4]), w = T([3, 4]), y = T([2, 3]);
  assert.is(code(() => cpu.ops.linear(y, x, w, null, false, { precision: 'fp16' as 'bf16' })), 'ERR_TARFLOW_INVALID_ARGUMENT');
  const d = (s: number[]) => new cpu.Tensor('float64', s);
  assert.is(code(() => cpu.ops.linear(d([2, 3]), d([2, 4]), d([3, 4]), null, false, bf16)), 'ERR_TARFLOW_INVALID_ARGUMENT');
  assert.is(code(() => cpu.ops.linear(y, x, w, null, false, { gelu: T([3, 2]) })), 'ERR_TARFLOW_SHAPE');
  assert.is(code(() => cpu.ops.linearBackward(null, null, null, y, x, w, false, { gelu: y } as MatmulOptions)), 'ERR_TARFLOW_INVALID_ARGUMENT');
  assert.is(code(() => new TarFlow({ inChannels: 1, imgSize: 8, patchSize: 4, channels: 64, numBlocks: 1, layersPerBlock: 1 },
    { device: 'cpu', dtype: 'float64', precision: 'bf16' })), 'ERR_TARFLOW_INVALID_ARGUMENT');
});

test('a model in bf16 (CPU emulation) stays within 2e-2 of float32: latents, log-dets, loss, gradients, dL/dx', () => {
  for (const [cfg, batch] of [
    [{ inChannels: 1, imgSize: 8, patchSize: 2, channels: 64, numBlocks: 2, layersPerBlock: 1, numClasses: 3 }, 3],
    [{ inChannels: 3, imgSize: 16, patchSize: 4, channels: 128, numBlocks: 2, layersPerBlock: 2, nvp: false }, 2],
  ] as const) {
    const errors = modelErrors(cfg, batch, { device: 'cpu', precision: 'bf16' }, { device: 'cpu', precision: 'fp32' });
    for (const [name, err] of Object.entries(errors)) assert.ok(err < 2e-2, `${JSON.stringify(cfg)}: ${name} relative error ${err}`);
    assert.ok(errors.gradients > 1e-5, 'bf16 gradients equal float32\'s: was bf16 applied?');
  }
  const bad = () => new TarFlow({ inChannels: 1, imgSize: 8, patchSize: 4, channels: 64, numBlocks: 1, layersPerBlock: 1 }, { device: 'cpu', precision: 'fp16' as 'bf16' });
  assert.throws(bad, (e: { code?: string }) => e.code === 'ERR_TARFLOW_INVALID_ARGUMENT');
});

test.run();
