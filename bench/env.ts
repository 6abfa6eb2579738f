/**
 * Environment switches around one call, for the benchmark and the tests both (test/helpers.ts re-exports it):
 * they pick a native kernel (TARFLOW_CPU_GEMM, TARFLOW_CUDA_GEMM, ...) for one row or one check.
 */

/** fn() with one environment variable set (the native side reads switches like TARFLOW_CPU_GEMM at each call), restored afterwards. */
export function withEnv<R>(name: string, value: string, fn: () => R): R {
  const before = process.env[name];
  process.env[name] = value;
  try {
    return fn();
  } finally {
    if (before === undefined) delete process.env[name];
    else process.env[name] = before;
  }
}
