import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { attentionBenchFlops } from '../bench/cost.js';
import { attentionCases, formatKernelRow, gemmCases, GEMM_SHAPES, kernelRow, median } from '../bench/kernels.js';
import { getBackend, type Backend } from '../lib/backend.js';

const cpu = getBackend('cpu');

/**
 * The CPU backend under CUDA's name, recording each product and wait in order: on CUDA an op returns once queued, so
 * a timed call that ends without a wait measures the launch, not the product.
 */
function recordingBackend(events: string[]): Backend {
  const ops = { ...cpu.ops };
  for (const name of ['linear', 'attention', 'attentionBackward', 'flashAttention', 'flashAttentionBackward'] as const) {
    const fn = cpu.ops[name] as (...a: unknown[]) => void;
    (ops as Record<string, unknown>)[name] = (...args: unknown[]) => {
      events.push(name);
      return fn(...args);
    };
  }
  return { device: 'cuda', Tensor: cpu.Tensor, ops, synchronize: () => events.push('synchronize') };
}

test('bench median: the middle value, and the mean of the two middle ones for an even count (not the larger)', () => {
  assert.is(median([5]), 5);
  assert.is(median([3, 1, 2]), 2);
  assert.is(median([1, 3]), 2, '--quick times two training steps: their median is not the slower one');
  assert.is(median([4, 1, 3, 2]), 2.5);
  assert.throws(() => median([]), /no values/);
});

test('bench gemm rows: 2 M N K flops, and each timed call waits for the device', () => {
  const events: string[] = [];
  const g = gemmCases(recordingBackend(events), 'fp32');
  try {
    assert.is(g.cases.length, GEMM_SHAPES.length);
    assert.is(g.cases[0].name, '1024^3');
    assert.is(g.cases[0].flops, 2 * 1024 ** 3);
    const fc2 = g.cases.find((c) => c.name.startsWith('fc2'))!;
    assert.is(fc2.flops, 2 * 12544 * 128 * 512);
    for (const c of g.cases) {
      events.length = 0;
      c.run();
      assert.equal(events, ['linear', 'synchronize'], c.name);
    }
  } finally {
    g.dispose();
  }
});

test('bench attention rows: the same flops as the targets table (FlashAttention convention), each call waiting for the device', () => {
  const events: string[] = [];
  const a = attentionCases(recordingBackend(events), 'fp32');
  try {
    assert.ok(a.fused, 'on CUDA the fused ops, as the model trains with');
    const f = attentionBenchFlops(64, 2, 196, 64);
    assert.is(a.cases.find((c) => c.name === 'bpd   B=64 T=196 forward')!.flops, f.forward);
    assert.is(a.cases.find((c) => c.name === 'bpd   B=64 T=196 forward+backward')!.flops, f.forwardBackward);
    assert.is(f.forwardBackward, 3.5 * 2 * 64 * 2 * 196 * 196 * 64, 'backward counted as 2.5 forwards');
    for (const c of a.cases) {
      events.length = 0;
      c.run();
      assert.is(events[events.length - 1], 'synchronize', c.name);
    }
  } finally {
    a.dispose();
  }
  const plain = attentionCases(cpu, 'fp32');
  try {
    assert.not.ok(plain.fused);
    assert.equal(plain.cases.map((c) => c.flops), a.cases.map((c) => c.flops), 'the CPU rows count as the CUDA ones do');
  } finally {
    plain.dispose();
  }
});

test('bench kernel rows free their tensors, also when an allocation is refused', () => {
  const { bytes: before, limitBytes } = cpu.ops.nativeMemory();
  gemmCases(cpu, 'fp32').dispose();
  attentionCases(cpu, 'fp32').dispose();
  assert.is(cpu.ops.nativeMemory().bytes, before, 'live native bytes back where they were');
  cpu.ops.setMemoryLimit(before + 40e6);
  try {
    assert.throws(() => gemmCases(cpu, 'fp32'), (err: Error & { code?: string }) => err.code === 'ERR_TARFLOW_OUT_OF_MEMORY');
    assert.throws(() => attentionCases(cpu, 'fp32'), (err: Error & { code?: string }) => err.code === 'ERR_TARFLOW_OUT_OF_MEMORY');
  } finally {
    cpu.ops.setMemoryLimit(limitBytes);
  }
  assert.is(cpu.ops.nativeMemory().bytes, before, 'what was made before the refusal is freed');
});

test('bench kernel rows: the report row\'s rate is the case\'s flops at the median of benchmark.js\'s samples, its name without the alignment, and the text prints it', () => {
  const c = { name: 'qkv   M=12544 N=384 K=128', flops: 2e9, run: () => {} };
  // One slow cycle (the cores taken by another process) would make the mean 0.03 s; the median stays 0.01 s.
  const sample = [0.011, 0.01, 0.17, 0.009, 0.01];
  const r = kernelRow('gemm', 'bf16', c, { sample, rme: 2.34 });
  assert.equal(r, { part: 'gemm', name: 'qkv M=12544 N=384 K=128', value: 200, unit: 'GFLOP/s', precision: 'bf16', median_ms: 10, samples: 5, rme_percent: 2.34, flops: 2e9 });
  assert.is(formatKernelRow('gemm bf16', 30, c, r), 'gemm bf16 qkv   M=12544 N=384 K=128        200.0 GFLOP/s  (median 10.000 ms of 5, ±2.3%)');
  assert.equal(sample, [0.011, 0.01, 0.17, 0.009, 0.01], 'the samples are left in their order');
  assert.is(kernelRow('attention', 'fp32', c, { sample: [1, 1, 1, 1, 1], rme: 0 }, false).fused, false);
});

test.run();
