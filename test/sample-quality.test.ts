/** Sample quality by nearest neighbours: the distance code against real MNIST, blocking, and eval-samples end to end. */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { getBackend } from '../lib/backend.js';
import { saveModel } from '../lib/checkpoint.js';
import { loadMnist, type ImageDataset } from '../lib/data.js';
import { TarflowError } from '../lib/errors.js';
import { TarFlow } from '../lib/model.js';
import { evaluateSamples, knnClassify, type KnnReference } from '../lib/sample-quality.js';
import { mulberry32, randomizeParams, repoRoot } from './helpers.js';

const D = 28 * 28;
const backend = getBackend('cpu');
let train: ImageDataset, testSet: ImageDataset, reference: KnnReference;
const dir = mkdtempSync(join(tmpdir(), 'tarflow-quality-'));
const tinyMnist = { inChannels: 1, imgSize: 28, patchSize: 7, channels: 64, numBlocks: 2, layersPerBlock: 1, numClasses: 10 };

test.before(async () => {
  train = await loadMnist('train');
  testSet = await loadMnist('test');
  reference = { images: train.images, labels: train.labels!, count: train.count, dim: D };
});

test.after(() => rmSync(dir, { recursive: true, force: true }));

function squaredDistance(a: Uint8Array, b: Uint8Array): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += (a[i] - b[i]) ** 2;
  return s;
}

test('3-NN over the training set classifies real test digits (a wrong distance gives ~10%)', () => {
  const n = 500;
  const r = knnClassify(backend, reference, testSet.images.subarray(0, n * D), 3);
  let correct = 0;
  for (let i = 0; i < n; i++) correct += r.labels[i] === testSet.labels![i] ? 1 : 0;
  assert.ok(correct / n > 0.95, `accuracy ${correct / n}`);
  // The reported neighbour really is at the reported distance.
  for (const i of [0, 123, 499]) {
    const d = squaredDistance(testSet.images.subarray(i * D, (i + 1) * D), train.images.subarray(r.nearestIndex[i] * D, (r.nearestIndex[i] + 1) * D));
    assert.ok(Math.abs(Math.sqrt(d) / 255 - r.nearestDistance[i]) < 1e-12, `query ${i}`);
    assert.ok(r.nearestDistance[i] > 0);
  }
});

test('a training image is its own nearest neighbour at distance 0; a shifted or noised copy is not', () => {
  const ids = [0, 7, 31337, 59999];
  const rand = mulberry32(3);
  const queries = new Uint8Array(3 * ids.length * D);
  ids.forEach((id, q) => {
    const img = train.images.subarray(id * D, (id + 1) * D);
    queries.set(img, q * D);
    // One pixel to the right.
    for (let y = 0; y < 28; y++) for (let x = 1; x < 28; x++) queries[(ids.length + q) * D + y * 28 + x] = img[y * 28 + x - 1];
    for (let p = 0; p < D; p++) queries[(2 * ids.length + q) * D + p] = Math.max(0, Math.min(255, Math.round(img[p] + 60 * (rand() - 0.5))));
  });
  const r = knnClassify(backend, reference, queries, 3);
  ids.forEach((id, q) => {
    assert.is(r.nearestDistance[q], 0, `image ${id}`);
    assert.is(r.nearestIndex[q], id);
    assert.is(r.labels[q], train.labels![id]);
    for (const copy of [ids.length + q, 2 * ids.length + q]) {
      const toOriginal = Math.sqrt(squaredDistance(queries.subarray(copy * D, (copy + 1) * D), train.images.subarray(id * D, (id + 1) * D))) / 255;
      assert.ok(r.nearestDistance[copy] > 0, `copy ${copy} of image ${id}`);
      // The original is one of the candidates, so nothing reported can be farther than it.
      assert.ok(r.nearestDistance[copy] <= toOriginal + 1e-12, `copy ${copy}: ${r.nearestDistance[copy]} > ${toOriginal}`);
    }
  });
});

test('blocking over queries and references gives the same answers as one block', () => {
  const R = 6000, Q = 300;
  const ref: KnnReference = { images: train.images.subarray(0, R * D), labels: train.labels!.subarray(0, R), count: R, dim: D };
  const queries = testSet.images.subarray(1000 * D, (1000 + Q) * D);
  const one = knnClassify(backend, ref, queries, 5, { queryBlock: Q, referenceBlock: R });
  const many = knnClassify(backend, ref, queries, 5, { queryBlock: 37, referenceBlock: 999 });
  assert.equal(Array.from(many.labels), Array.from(one.labels));
  assert.equal(Array.from(many.nearestIndex), Array.from(one.nearestIndex));
  assert.equal(Array.from(many.nearestDistance), Array.from(one.nearestDistance));
});

test('knnClassify names bad arguments', () => {
  const small: KnnReference = { images: train.images.subarray(0, 4 * D), labels: train.labels!.subarray(0, 4), count: 4, dim: D };
  assert.throws(() => knnClassify(backend, small, new Uint8Array(D + 1)), (e: TarflowError) => e.code === 'ERR_TARFLOW_SHAPE' && /whole number/.test(e.message));
  assert.throws(() => knnClassify(backend, small, new Uint8Array(D), 5), (e: TarflowError) => e.code === 'ERR_TARFLOW_INVALID_ARGUMENT' && /k: expected an integer in \[1, 4\], got 5/.test(e.message));
  assert.throws(() => knnClassify(backend, { ...small, count: 5 }, new Uint8Array(D)), (e: TarflowError) => e.code === 'ERR_TARFLOW_SHAPE');
  // a block larger than the queries is cut to them, not allocated
  const huge = knnClassify(backend, small, train.images.subarray(0, 2 * D), 1, { queryBlock: 2 ** 40 });
  assert.equal(Array.from(huge.nearestIndex), [0, 1]);
});

test('evaluateSamples refuses a k or search option it cannot use before drawing any sample', async () => {
  const model = new TarFlow(tinyMnist, { device: 'cpu', seed: 2 });
  try {
    for (const [options, pattern] of [
      [{ k: train.count + 1 }, /k: expected an integer in \[1, \d+\]/],
      [{ knn: { queryBlock: 0 } }, /knn\.queryBlock: expected a positive integer, got 0/],
    ] as const) {
      const phases: string[] = [];
      await evaluateSamples(model, { count: 10, train, test: testSet, ...options, onProgress: (phase) => { phases.push(phase); } }).then(
        () => assert.unreachable('must be refused'),
        (e: TarflowError) => assert.match(e.message, pattern),
      );
      assert.equal(phases, [], 'refused before sampling');
    }
  } finally {
    model.dispose();
  }
});

test('evaluateSamples scores a small random conditional MNIST model end to end', async () => {
  const model = new TarFlow(tinyMnist, { device: 'cpu', seed: 2 });
  randomizeParams(model, 9, 0.02);
  try {
    const r = await evaluateSamples(model, { count: 30, guidance: 1, seed: 1, train, test: testSet });
    assert.is(r.count, 30);
    assert.is(r.testImages, 30);
    assert.ok(r.accuracy >= 0 && r.accuracy <= 1);
    assert.is(r.perClassAccuracy.length, 10);
    for (const a of r.perClassAccuracy) assert.ok(a !== null && a >= 0 && a <= 1);
    for (const d of [r.nearestDistance, r.trainingSetNearestBaseline]) {
      assert.ok(d.min > 0 && d.min <= d.median && d.min <= d.mean, JSON.stringify(d));
      // sqrt(784) = 28 is the largest distance between images with pixels in [0, 1].
      assert.ok(d.mean < 28, JSON.stringify(d));
    }
    // Random weights make noise, far from every digit; real digits are nearer.
    assert.ok(r.nearestDistance.mean > r.trainingSetNearestBaseline.mean);
    assert.ok(r.testSetAccuracy > 0.8, String(r.testSetAccuracy));
  } finally {
    model.dispose();
  }
});

test('evaluateSamples refuses unconditional and non-MNIST-shaped models', async () => {
  const uncond = new TarFlow({ ...tinyMnist, numClasses: 0 }, { device: 'cpu' });
  const cifar = new TarFlow({ ...tinyMnist, inChannels: 3, imgSize: 8, patchSize: 4 }, { device: 'cpu' });
  try {
    await evaluateSamples(uncond, { count: 10, train, test: testSet }).then(
      () => assert.unreachable('an unconditional model was accepted'),
      (e: TarflowError) => {
        assert.is(e.code, 'ERR_TARFLOW_INVALID_ARGUMENT');
        assert.match(e.message, /class-conditional/);
      });
    await evaluateSamples(cifar, { count: 10, train, test: testSet }).then(
      () => assert.unreachable('a 3 x 8 x 8 model was accepted'),
      (e: TarflowError) => {
        assert.is(e.code, 'ERR_TARFLOW_SHAPE');
        assert.match(e.message, /1 x 28 x 28/);
      });
  } finally {
    uncond.dispose();
    cifar.dispose();
  }
});

test('tarflow eval-samples reports JSON through the worker, and refuses an unconditional checkpoint', async () => {
  const ckpt = join(dir, 'mnist.safetensors');
  const model = new TarFlow(tinyMnist, { device: 'cpu', seed: 4 });
  randomizeParams(model, 5, 0.02);
  await saveModel(ckpt, model);
  model.dispose();
  const cli = join(repoRoot, 'dist', 'lib', 'cli.js');
  const run = (args: string[]) => spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', env: { ...process.env, TARFLOW_QUIET: '1' }, timeout: 120_000 });
  const r = run(['eval-samples', '--checkpoint', ckpt, '--count', '20', '--k', '1', '--denoise', '0.1', '--device', 'cpu', '--json']);
  assert.is(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout);
  assert.is(out.count, 20);
  assert.is(out.k, 1);
  assert.ok(out.accuracy >= 0 && out.accuracy <= 1);
  assert.ok(out.nearestDistance.min > 0);
  const text = run(['eval-samples', '--checkpoint', ckpt, '--count', '10', '--device', 'cpu']);
  assert.is(text.status, 0, text.stderr);
  assert.match(text.stdout, /kNN accuracy \(k = 3\) of 10 samples/);
  assert.match(text.stdout, /real test images:/);

  const uncondPath = join(dir, 'uncond.safetensors');
  const uncond = new TarFlow({ ...tinyMnist, numClasses: 0 }, { device: 'cpu' });
  await saveModel(uncondPath, uncond);
  uncond.dispose();
  const bad = run(['eval-samples', '--checkpoint', uncondPath, '--count', '10', '--device', 'cpu']);
  assert.is(bad.status, 1);
  assert.match(bad.stderr, /class-conditional.*ERR_TARFLOW_INVALID_ARGUMENT/);
});

test.run();
