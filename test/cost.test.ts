import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { attentionBenchFlops, modelCost } from '../bench/cost.js';
import { IMAGENET64 } from '../bench/targets.js';
import { validateConfig } from '../lib/config.js';

test('the cost model counts a small model by hand', () => {
  // T = 4 tokens of D = 4 values, width 64, hidden 256, one block of one layer, NVP (proj_out gives 8 per token)
  const c = modelCost(validateConfig({ inChannels: 1, imgSize: 4, patchSize: 2, channels: 64, numBlocks: 1, layersPerBlock: 1 }));
  const denseWeights = 3 * 64 * 64 + 64 * 64 + 2 * 64 * 256;
  assert.is(c.denseFlops, 4 * (2 * denseWeights + 2 * 4 * 64 + 2 * 64 * 8));
  // queries see 1, 2, 3, 4 keys: 10 pairs, two products of 2 * 64 flops each
  assert.is(c.attentionFlops, 10 * 2 * 2 * 64);
  assert.is(c.trainFlops, 3 * (c.denseFlops + c.attentionFlops));
  assert.is(c.kvReadsPerImage, 10 * 2 * 64);
  assert.is(c.weightsPerTokenStep, denseWeights + 4 * 64 + 64 * 8);
});

test('the ImageNet 64 model costs what the GPU targets assume: ~3.1 TFLOP per training image, ~103 GB of bf16 KV reads per sample', () => {
  const c = modelCost(IMAGENET64);
  assert.ok(Math.abs(c.trainFlops / 1e12 - 3.1) < 0.05, `train flops ${c.trainFlops}`);
  assert.ok(Math.abs((2 * c.kvReadsPerImage) / 1e9 - 103) < 1, `kv bytes ${2 * c.kvReadsPerImage}`);
});

test('causal attention flops follow the FlashAttention convention', () => {
  const f = attentionBenchFlops(32, 12, 1024, 64);
  assert.is(f.forward, 2 * 32 * 12 * 1024 * 1024 * 64);
  assert.is(f.forwardBackward, 3.5 * f.forward);
});

test.run();
