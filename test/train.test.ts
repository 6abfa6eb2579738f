/** Training: exact resume, schedule, non-finite steps, clipping, label drop, the VP prior, and that it learns. */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { makeDataset, type ImageDataset } from '../lib/data.js';
import { TarFlow } from '../lib/model.js';
import { Trainer, learningRate, resolveTrainOptions } from '../lib/train.js';
import type { TarFlowConfig } from '../lib/config.js';
import { TarflowError } from '../lib/errors.js';
import { readSafetensors, writeSafetensors } from '../lib/safetensors.js';
import { writeNpy } from '../lib/npy.js';
import { runTrain } from '../lib/train-task.js';
import { getBackend } from '../lib/backend.js';

const dir = mkdtempSync(join(tmpdir(), 'tarflow-train-'));

/** 64 structured 8x8 grey images in 3 classes: a bright square whose position depends on the class. */
function toyData(n = 64): ImageDataset {
  const S = 8;
  const images = new Uint8Array(n * S * S);
  const labels = new Int32Array(n);
  let s = 12345;
  const rnd = () => ((s = (s * 1103515245 + 12345) >>> 0) / 2 ** 32);
  for (let i = 0; i < n; i++) {
    const c = i % 3;
    labels[i] = c;
    for (let y = 0; y < S; y++)
      for (let x = 0; x < S; x++) {
        const inside = x >= c * 2 && x < c * 2 + 3 && y >= 2 && y < 6;
        images[i * S * S + y * S + x] = inside ? 200 + Math.floor(rnd() * 55) : Math.floor(rnd() * 20);
      }
  }
  return makeDataset('toy', images, n, 1, S, labels);
}

const cfg = (over: Partial<TarFlowConfig> = {}): Partial<TarFlowConfig> => ({
  inChannels: 1, imgSize: 8, patchSize: 2, channels: 64, numBlocks: 2, layersPerBlock: 1, numClasses: 3, ...over,
});

function runSteps(model: TarFlow, data: ImageDataset, steps: number, opts = {}): Trainer {
  const t = new Trainer(model, data, { batchSize: 16, steps: 8, lr: 1e-3, seed: 7, ...opts });
  for (let i = 0; i < steps; i++) t.trainStep();
  return t;
}

for (const nvp of [true, false]) {
  test(`resume continues exactly as an uninterrupted run (${nvp ? 'NVP' : 'VP'})`, async () => {
    const data = toyData();
    const a = new TarFlow(cfg({ nvp }), { device: 'cpu', seed: 3 });
    const ta = runSteps(a, data, 6);
    const b = new TarFlow(cfg({ nvp }), { device: 'cpu', seed: 3 });
    const tb = runSteps(b, data, 3);
    const path = join(dir, `state-${nvp}.safetensors`);
    await tb.saveState(path);
    tb.dispose();
    b.dispose();
    const c = new TarFlow(cfg({ nvp }), { device: 'cpu', seed: 99 });
    const tc = new Trainer(c, data, { batchSize: 16, steps: 8, lr: 1e-3, seed: 7 });
    await tc.loadState(path);
    assert.is(tc.step, 3);
    for (let i = 0; i < 3; i++) tc.trainStep();
    const pa = a.params.flat.toArray(), pc = c.params.flat.toArray();
    let diff = 0;
    for (let i = 0; i < pa.length; i++) if (pa[i] !== pc[i]) diff++;
    assert.is(diff, 0, `${diff} parameters differ after resume`);
    assert.equal(Array.from(a.variance.toArray()), Array.from(c.variance.toArray()));
    if (!nvp) assert.ok(Array.from(a.variance.toArray()).some((v) => v !== 1), 'VP prior variance should move');
    ta.dispose(); tc.dispose(); a.dispose(); c.dispose();
  });
}

test('loadState refuses a state from another batch size or config', async () => {
  const data = toyData();
  const m = new TarFlow(cfg(), { device: 'cpu' });
  const t = runSteps(m, data, 1);
  const path = join(dir, 'state-x.safetensors');
  await t.saveState(path);
  const other = new Trainer(m, data, { batchSize: 8, steps: 4 });
  try {
    await other.loadState(path);
    assert.unreachable('should throw');
  } catch (err) {
    assert.instance(err, TarflowError);
    assert.is((err as TarflowError).code, 'ERR_TARFLOW_CHECKPOINT');
  }
  const m2 = new TarFlow(cfg({ channels: 128 }), { device: 'cpu' });
  const t2 = new Trainer(m2, data, { batchSize: 16, steps: 4, seed: 7 });
  await assertRejects(() => t2.loadState(path), 'ERR_TARFLOW_CHECKPOINT', /different model config/);
  t.dispose(); other.dispose(); t2.dispose(); m.dispose(); m2.dispose();
});

test('loadState refuses damaged metadata, naming the field, instead of resuming from nonsense', async () => {
  const data = toyData();
  const m = new TarFlow(cfg(), { device: 'cpu' });
  const t = runSteps(m, data, 2);
  const path = join(dir, 'state-damaged.safetensors');
  await t.saveState(path);
  const file = await readSafetensors(path);
  const train = JSON.parse(file.metadata.train);
  const cases: Array<[string, RegExp]> = [
    ['{"step": 2,', /metadata 'train': expected JSON, got invalid JSON/],
    [JSON.stringify({ ...train, step: -1 }), /train'\.step: expected an integer >= 0, got -1/],
    [JSON.stringify({ ...train, updates: 5 }), /train'\.updates: expected at most step \(2\), got 5/],
    [JSON.stringify({ ...train, options: null }), /train'\.options: expected /],
    [JSON.stringify({ ...train, dataset: { count: 'many' } }), /dataset\.count: expected an integer >= 0, got "many"/],
  ];
  for (const [text, message] of cases) {
    const damaged = join(dir, 'state-damaged-2.safetensors');
    await writeSafetensors(damaged, file.tensors, { ...file.metadata, train: text });
    await assertRejects(() => t.loadState(damaged), 'ERR_TARFLOW_CHECKPOINT', message);
  }
  t.dispose(); m.dispose();
});

async function assertRejects(fn: () => Promise<unknown>, code: string, msg: RegExp) {
  try {
    await fn();
  } catch (err) {
    assert.is((err as TarflowError).code, code);
    assert.match((err as Error).message, msg);
    return;
  }
  assert.unreachable('expected a rejection');
}

test('a disposed model or trainer refuses work with ERR_TARFLOW_DISPOSED, and a refused Trainer allocates nothing', async () => {
  const disposedCode = (fn: () => unknown, pattern: RegExp) => {
    try {
      fn();
    } catch (err) {
      assert.ok(err instanceof TarflowError && err.code === 'ERR_TARFLOW_DISPOSED', String(err));
      assert.match((err as Error).message, pattern);
      return;
    }
    assert.unreachable('accepted');
  };
  const data = toyData();
  const gone = new TarFlow(cfg(), { device: 'cpu', seed: 1 });
  gone.dispose();
  const before = gone.backend.ops.nativeMemory();
  disposedCode(() => new Trainer(gone, data, { batchSize: 16, steps: 2 }), /this model was disposed/);
  assert.equal(gone.backend.ops.nativeMemory().buffers, before.buffers, 'no gradients or moments left behind');
  const model = new TarFlow(cfg(), { device: 'cpu', seed: 1 });
  const t = runSteps(model, data, 1);
  t.dispose();
  t.dispose(); // twice is fine
  assert.ok(t.disposed);
  disposedCode(() => t.trainStep(), /this trainer was disposed; create a new Trainer/);
  const saved = await t.saveState(join(dir, 'gone-state.safetensors')).then(() => null, (e: unknown) => e);
  assert.ok(saved instanceof TarflowError && saved.code === 'ERR_TARFLOW_DISPOSED', String(saved));
  model.dispose();
});

test('a training state whose config claims a far larger model than its tensors is refused before that model is made', async () => {
  const n = 16;
  const x = join(dir, 'claims-x.npy');
  await writeNpy(x, Uint8Array.from({ length: n * 64 }, (_, i) => (i * 37) % 256), [n, 1, 8, 8]);
  const out = join(dir, 'claims-run');
  const ctx = { progress: () => {}, log: () => {}, aborted: () => false };
  const config = { in_channels: 1, img_size: 8, patch_size: 4, channels: 64, num_blocks: 1, layers_per_block: 1, nvp: true, num_classes: 0 };
  await runTrain({ dataset: x, out, steps: 1, batchSize: 4, evalImages: 0, config }, ctx);
  const statePath = join(out, 'train-state.safetensors');
  const state = await readSafetensors(statePath);
  // 200 MB of parameters (and as much again for each of the gradients and the two moments) over a state of 60 KB
  await writeSafetensors(statePath, state.tensors, { ...state.metadata, config: JSON.stringify({ ...config, channels: 512, num_blocks: 4, layers_per_block: 4 }) });
  const ops = getBackend('cpu').ops;
  const before = ops.nativeMemory(true).bytes;
  const outcome = await runTrain({ out, resume: true }, ctx).then(() => 'resumed', (e: unknown) => e);
  assert.ok(outcome instanceof TarflowError && outcome.code === 'ERR_TARFLOW_CHECKPOINT', String(outcome));
  assert.match((outcome as Error).message, /train-state\.safetensors: tensor 'params' is missing or has the wrong size/);
  const peak = ops.nativeMemory().peakBytes - before;
  assert.ok(peak < 32 << 20, `${peak} bytes allocated for the model the state claims`);
});

test('learning rate: warm-up from minLr to the peak, cosine back to minLr at the last step', () => {
  const o = resolveTrainOptions({ batchSize: 10, steps: 100, lr: 1e-3, minLr: 1e-6, warmupSteps: 10 }, 1000);
  assert.is(learningRate(o, 0), 1e-6);
  assert.ok(Math.abs(learningRate(o, 10) - 1e-3) < 1e-12);
  assert.ok(Math.abs(learningRate(o, 99) - 1e-6) < 1e-12);
  for (let s = 1; s <= 10; s++) assert.ok(learningRate(o, s) > learningRate(o, s - 1));
  for (let s = 11; s < 100; s++) assert.ok(learningRate(o, s) < learningRate(o, s - 1));
  const d = resolveTrainOptions({ batchSize: 100, epochs: 3 }, 1000);
  assert.is(d.steps, 30);
  assert.is(d.warmupSteps, 7, 'default warm-up: one epoch, at most a quarter of the run');
  assert.is(resolveTrainOptions({ batchSize: 10, epochs: 40 }, 100).warmupSteps, 10, 'one epoch for long runs');
});

test('bad training options are rejected with the option named', () => {
  for (const [opts, re] of [
    [{ batchSize: 0 }, /batchSize/], [{ batchSize: 1e6 }, /batchSize: expected at most the dataset size \(1000 images\), got 1000000; use a smaller batch/], [{ lr: -1 }, /lr/],
    [{ noise: 'salt' }, /noise/], [{ labelDrop: 2 }, /labelDrop/], [{ seed: -3 }, /seed/], [{ clipGradNorm: 0 }, /clipGradNorm/],
  ] as const) {
    try {
      resolveTrainOptions(opts as never, 1000);
      assert.unreachable(`accepted ${JSON.stringify(opts)}`);
    } catch (err) {
      assert.is((err as TarflowError).code, 'ERR_TARFLOW_INVALID_ARGUMENT');
      assert.match((err as Error).message, re);
    }
  }
});

test('non-finite steps are skipped and counted; too many in a row stop training', () => {
  const data = toyData();
  const m = new TarFlow(cfg(), { device: 'cpu' });
  const t = new Trainer(m, data, { batchSize: 16, steps: 20, maxNonFiniteSteps: 3 });
  const p = m.params.flat.toArray();
  p[0] = NaN; // proj_in weight of block 0: every forward becomes NaN
  m.params.flat.copyFrom(p as Float32Array);
  const before = m.params.flat.toArray();
  const r = t.trainStep();
  assert.ok(r.skipped);
  assert.is(t.skippedSteps, 1);
  const after = m.params.flat.toArray();
  for (let i = 1; i < before.length; i++) assert.is(after[i], before[i]);
  t.trainStep();
  try {
    t.trainStep();
    assert.unreachable('third non-finite step in a row should stop training');
  } catch (err) {
    assert.is((err as TarflowError).code, 'ERR_TARFLOW_NON_FINITE');
  }
  t.dispose(); m.dispose();
});

test('gradient clipping scales the gradient to the given norm', () => {
  const data = toyData();
  const m = new TarFlow(cfg(), { device: 'cpu' });
  const t = new Trainer(m, data, { batchSize: 16, steps: 4, clipGradNorm: 1e-3 });
  const r = t.trainStep();
  assert.ok(r.gradNorm > 1e-3, 'test needs a gradient larger than the clip');
  const norm = Math.sqrt(m.ops.sumSquares(t.grads.flat));
  assert.ok(Math.abs(norm - 1e-3) < 1e-6, `clipped norm ${norm}`);
  t.dispose(); m.dispose();
});

test('label drop: probability 1 drops every label, 0 keeps them', () => {
  const data = toyData();
  const m = new TarFlow(cfg(), { device: 'cpu' });
  const all = new Trainer(m, data, { batchSize: 16, steps: 2, labelDrop: 1 });
  all.trainStep();
  assert.ok(Array.from(m.workspace(16).labels.toArray()).every((y) => y === -1));
  const none = new Trainer(m, data, { batchSize: 16, steps: 2, labelDrop: 0 });
  none.trainStep();
  const idx = none.batchIndices(0);
  assert.equal(Array.from(m.workspace(16).labels.toArray()), Array.from(idx, (i) => data.labels![i]));
  all.dispose(); none.dispose(); m.dispose();
});

test('training lowers the loss on structured data', () => {
  const data = toyData(96);
  const m = new TarFlow(cfg(), { device: 'cpu', seed: 1 });
  const t = new Trainer(m, data, { batchSize: 32, steps: 60, lr: 3e-3, warmupSteps: 5, seed: 1 });
  const losses: number[] = [];
  while (!t.done) losses.push(t.trainStep().loss);
  const first = losses.slice(0, 3).reduce((a, b) => a + b) / 3;
  const last = losses.slice(-3).reduce((a, b) => a + b) / 3;
  assert.ok(last < first - 0.3, `loss went from ${first.toFixed(3)} to ${last.toFixed(3)}`);
  t.dispose(); m.dispose();
});

test.after(() => rmSync(dir, { recursive: true, force: true }));
test.run();
