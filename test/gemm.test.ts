/**
 * The CPU GEMM's own checks (native/cpu/gemm_bench.cc --quick): every transpose, alpha and beta, K and N blocks,
 * thread invariance, and the causal triangles attention uses (each bit-identical to the full product where it is
 * wanted). The ops' tests reach the GEMM only through the model's shapes; these reach the blocking edges and the
 * triangles' diagonals, K blocks and thread splits that no op uses yet. Built as the addon builds it (its ISA), and
 * on x64 also for the other kernels a user's CPU may get: AVX2 + FMA (most x64 laptops), plain C++ (the portable
 * kernel, for CPUs with neither SIMD kernel), and, where a cross compiler and qemu are installed, the AArch64 NEON
 * kernel (Apple Silicon, Graviton) under emulation.
 */
import { readFileSync } from 'node:fs';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { onPath, runNativeCheck } from './helpers.js';

function gemmChecks(arch: string[], cross: { cxx: string; runner: string; args: string[] } | null = null): string | null {
  return runNativeCheck('gemm_bench', {
    sources: ['native/cpu/gemm_bench.cc', 'native/cpu/gemm.cc', 'native/cpu/gemm_bf16.cc', 'native/common/threads.cc'],
    flags: ['-std=c++20', '-pthread', '-fno-math-errno', '-fno-trapping-math', '-fopenmp-simd', ...arch],
    sanitize: false,
    args: ['--quick', ...(cross?.args ?? [])],
    cxx: cross?.cxx,
    runner: cross?.runner,
  });
}

const x64 = process.arch === 'x64';

test('the CPU GEMM passes its standalone checks, built for the addon\'s ISA', () => {
  const failure = gemmChecks(x64 ? [process.env.TARFLOW_NATIVE_ARCH || '-march=native', '-mprefer-vector-width=512'] : []);
  assert.is(failure, null, failure ?? '');
});

const cpuFlags = x64 ? (() => { try { return readFileSync('/proc/cpuinfo', 'utf8'); } catch { return ''; } })() : '';
if (/\bavx2\b/.test(cpuFlags) && /\bfma\b/.test(cpuFlags)) {
  test('the CPU GEMM passes its standalone checks with the AVX2 + FMA kernel (-march=haswell)', () => {
    const failure = gemmChecks(['-march=haswell']);
    assert.is(failure, null, failure ?? '');
  });
}

if (x64) {
  test('the CPU GEMM passes its standalone checks with the portable kernel (-march=x86-64)', () => {
    const failure = gemmChecks(['-march=x86-64']);
    assert.is(failure, null, failure ?? '');
  });
}

// Debian: apt-get install g++-aarch64-linux-gnu qemu-user (.ci/run does where it can). Static, so qemu needs no
// AArch64 libraries; the float cases only (--f32): the double and bf16 ones run the portable kernel, checked above,
// and emulation makes every case about 30 times slower (43 s of CPU for the float cases, 1.4 s natively).
const crossCxx = 'aarch64-linux-gnu-g++', emulator = 'qemu-aarch64';
if (x64 && onPath(crossCxx) && onPath(emulator)) {
  test('the CPU GEMM passes its standalone float checks with the AArch64 NEON kernel (cross-built, run under qemu)', () => {
    const failure = gemmChecks(['-static'], { cxx: crossCxx, runner: emulator, args: ['--f32'] });
    assert.is(failure, null, failure ?? '');
  });
} else if (x64) {
  console.log(`  gemm.test: no ${crossCxx} and ${emulator} on the PATH: the AArch64 kernel is not checked here`);
}

test.run();
