/**
 * The sampler's split-KV decode attention (native/cuda/decode_tile.h) without a GPU: its per-thread logic run on
 * the CPU for every thread against plain softmax attention (test/native/decode_tile_test.cc). The kernels
 * themselves are compared with the reference sampler and the CPU in cuda-parity.test.ts.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { runNativeCheck } from './helpers.js';

test("the split-KV decode attention's per-thread logic, run on the CPU for every thread against plain attention", () => {
  const failure = runNativeCheck('decode_tile_test');
  assert.ok(failure === null, failure ?? '');
});

test.run();
