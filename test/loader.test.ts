/**
 * The training data loader: a batch depends only on (data, options, step), whatever the worker count, prefetch
 * depth or order of asking; its content is the documented streams; threads end on dispose, abort, failure and
 * process exit; a worker's failure reaches the caller as a TarflowError.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawnSync } from 'node:child_process';
import { cpSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { getBackend } from '../lib/backend.js';
import { makeDataset, type ImageDataset } from '../lib/data.js';
import { epochPermutation } from '../lib/random.js';
import { TarflowError } from '../lib/errors.js';
import { BatchLoader, type Batch, type LoaderOptions } from '../lib/loader.js';
import { TarFlow } from '../lib/model.js';
import { Trainer } from '../lib/train.js';
import { mulberry32, repoRoot } from './helpers.js';

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

/** 50 random RGB 6x6 images in 4 classes. */
function toyData(count = 50): ImageDataset {
  const u = mulberry32(5);
  const images = Uint8Array.from({ length: count * 3 * 36 }, () => Math.floor(u() * 256));
  return makeDataset('toy', images, count, 3, 6, Int32Array.from({ length: count }, (_, i) => i % 4));
}

const augment = { batchSize: 8, seed: 3, noise: 'gaussian', sigma: 0.1, labelDrop: 0.3, hflip: true } as const;

function batches(data: ImageDataset, options: LoaderOptions, steps: number[]): Batch[] {
  const loader = new BatchLoader(data, options);
  try {
    return steps.map((s) => loader.batch(s));
  } finally {
    loader.dispose();
  }
}

function assertSameBatches(got: Batch[], want: Batch[], what: string) {
  assert.is(got.length, want.length);
  got.forEach((b, k) => {
    assert.is(b.step, want[k].step);
    assert.equal(Array.from(b.labels), Array.from(want[k].labels), `${what}: labels of step ${b.step}`);
    const differ = b.images.findIndex((v, i) => !Object.is(v, want[k].images[i]));
    assert.is(differ, -1, `${what}: step ${b.step} differs at value ${differ}`);
  });
}

test('a batch does not depend on the worker count, the prefetch depth or the order steps are asked in', () => {
  const data = toyData();
  const steps = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13];
  for (const variant of [{}, { noise: 'uniform' as const }, { dtype: 'float64' as const, hflip: false }, { sigma: 0, labelDrop: 0 }]) {
    const options = { ...augment, ...variant };
    const reference = batches(data, { ...options, workers: 0 }, steps);
    for (const [workers, prefetch] of [[1, 1], [2, 3], [3, 7]]) {
      assertSameBatches(batches(data, { ...options, workers, prefetch }, steps), reference, `${JSON.stringify(variant)} ${workers} workers, prefetch ${prefetch}`);
    }
    // a resumed run starts at an arbitrary step; a restarted one goes back
    const order = [9, 10, 11, 4, 5, 13, 0];
    assertSameBatches(batches(data, { ...options, workers: 2, prefetch: 2 }, order), order.map((s) => reference[s]), `${JSON.stringify(variant)} out of order`);
  }
});

test('a batch is the shuffled images, scaled, flipped and noised from the documented streams', () => {
  const data = toyData();
  const { ops, Tensor } = getBackend('cpu');
  const draw = (kind: 'normal' | 'uniform', stream: number, offset: number, n: number) => {
    const t = new Tensor('float32', [n]);
    ops[kind](t, augment.seed, stream, offset);
    const a = t.toArray();
    t.dispose();
    return a;
  };
  const B = augment.batchSize, per = 3 * 36, stepsPerEpoch = Math.floor(data.count / B);
  for (const step of [0, 7, stepsPerEpoch + 2]) {
    const [batch] = batches(data, { ...augment, workers: 1 }, [step]);
    const order = epochPermutation(data.count, augment.seed, Math.floor(step / stepsPerEpoch));
    const noise = draw('normal', 11, step * B * per, B * per);
    const drop = draw('uniform', 12, step * B, B);
    const flip = draw('uniform', 13, step * B, B);
    for (let b = 0; b < B; b++) {
      const image = order[(step % stepsPerEpoch) * B + b];
      assert.is(batch.labels[b], drop[b] < augment.labelDrop ? -1 : data.labels![image]);
      for (let i = 0; i < per; i++) {
        const col = i % 6;
        const pixel = data.images[image * per + i - col + (flip[b] < 0.5 ? 5 - col : col)];
        assert.is(batch.images[b * per + i], Math.fround(pixel / 127.5 - 1 + augment.sigma * noise[b * per + i]));
      }
    }
  }
});

test('an epoch visits each image at most once, a new epoch reshuffles; unconditional batches carry no labels', () => {
  // image k is a flat 2x2 grey square of value k, so a noiseless batch names its images
  const count = 50;
  const data = makeDataset('numbered', Uint8Array.from({ length: count * 4 }, (_, i) => i >> 2), count, 1, 2, Int32Array.from({ length: count }, (_, i) => i % 4));
  const loader = new BatchLoader(data, { ...augment, sigma: 0, labels: false, workers: 2 });
  assert.is(loader.stepsPerEpoch, 6);
  const epochs = [0, 1].map((epoch) => {
    const images: number[] = [];
    for (let s = 0; s < 6; s++) {
      const batch = loader.batch(epoch * 6 + s);
      assert.ok(batch.labels.every((y) => y === -1));
      for (let b = 0; b < augment.batchSize; b++) images.push(Math.round((batch.images[b * 4] + 1) * 127.5));
    }
    return images;
  });
  loader.dispose();
  for (const images of epochs) assert.is(new Set(images).size, 48);
  assert.not.equal(epochs[0], epochs[1]);
});

test('the trainer gives the same parameters with any loader threads', () => {
  const data = makeDataset('grey', toyData(64).images.subarray(0, 64 * 64), 64, 1, 8, Int32Array.from({ length: 64 }, (_, i) => i % 3));
  const params = (loader: { workers?: number; prefetch?: number }) => {
    const model = new TarFlow({ inChannels: 1, imgSize: 8, patchSize: 2, channels: 64, numBlocks: 1, layersPerBlock: 1, numClasses: 3 }, { device: 'cpu', seed: 1 });
    const trainer = new Trainer(model, data, { batchSize: 16, steps: 5, seed: 9, hflip: true }, loader);
    while (!trainer.done) trainer.trainStep();
    const p = Array.from(model.params.flat.toArray());
    trainer.dispose();
    model.dispose();
    return p;
  };
  const inline = params({ workers: 0 });
  assert.equal(params({ workers: 2, prefetch: 3 }), inline);
  assert.equal(params({}), inline);
});

test('dispose and abort end the threads; a loader used afterwards says why', async () => {
  const data = toyData();
  const loader = new BatchLoader(data, { ...augment, workers: 2 });
  loader.batch(0);
  loader.dispose();
  await loader.closed;
  assert.throws(() => loader.batch(1), (err: TarflowError) => err.code === 'ERR_TARFLOW_DISPOSED');

  const controller = new AbortController();
  const aborted = new BatchLoader(data, { ...augment, workers: 2, signal: controller.signal });
  aborted.batch(0);
  controller.abort();
  await aborted.closed;
  assert.throws(() => aborted.batch(1), (err: TarflowError) => err.code === 'ERR_TARFLOW_ABORTED');
});

test('an abandoned loader\'s threads end when it is collected', async () => {
  const closed = (() => {
    const loader = new BatchLoader(toyData(), { ...augment, workers: 1 });
    loader.batch(0);
    return loader.closed;
  })();
  let done = false;
  void closed.then(() => (done = true));
  for (let i = 0; i < 50 && !done; i++) {
    gc();
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  assert.ok(done, 'the threads of a collected loader are still running');
});

test('bad loader options and steps are refused', () => {
  const data = toyData();
  for (const [options, re] of [[{ workers: -1 }, /workers/], [{ workers: 1.5 }, /workers/], [{ prefetch: 0 }, /prefetch/]] as const) {
    assert.throws(() => new BatchLoader(data, { ...augment, ...options }), (err: TarflowError) => err.code === 'ERR_TARFLOW_INVALID_ARGUMENT' && re.test(err.message));
  }
  const loader = new BatchLoader(data, { ...augment, steps: 4, workers: 0 });
  for (const step of [-1, 0.5, 4]) assert.throws(() => loader.batch(step), (err: TarflowError) => err.code === 'ERR_TARFLOW_INVALID_ARGUMENT');
  loader.dispose();
});

test('a worker that dies unheard of (its exit event cannot run while batch() waits) fails batch() after stallSeconds', () => {
  const loader = new BatchLoader(toyData(), { ...augment, workers: 1, prefetch: 2, steps: 2, stallSeconds: 1.5 });
  loader.batch(0);
  // Let the worker finish step 1 and go idle: terminating it inside a native call is what stop() avoids.
  const until = Date.now() + 300;
  while (Date.now() < until) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 20);
  const worker = (loader as unknown as { threads: { workers: { terminate(): Promise<number> }[] } }).threads.workers[0];
  void worker.terminate();
  // No await between the termination and the wait: the exit is never delivered, as when a worker runs out of memory.
  const t0 = Date.now();
  assert.throws(() => loader.batch(0), (err: TarflowError) => err.code === 'ERR_TARFLOW_NATIVE' && /sent nothing for \d+ s .*batch 0/.test(err.message));
  const waited = (Date.now() - t0) / 1000;
  assert.ok(waited >= 1.4 && waited < 10, `gave up after ${waited} s, expected about 1.5`);
  assert.throws(() => loader.batch(1), (err: TarflowError) => err.code === 'ERR_TARFLOW_NATIVE', 'the loader stays failed');
  assert.throws(() => new BatchLoader(toyData(), { ...augment, stallSeconds: 0 }), (err: TarflowError) => err.code === 'ERR_TARFLOW_INVALID_ARGUMENT' && /stallSeconds/.test(err.message));
});

/** Runs an ES module script with node; returns its exit status, output and run time. */
function runScript(script: string) {
  const t0 = Date.now();
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: 60_000, env: { ...process.env, TARFLOW_QUIET: '1' } });
  return { status: r.status, signal: r.signal, out: r.stdout.trim(), err: r.stderr, seconds: (Date.now() - t0) / 1000 };
}

test('a process ends while its loader threads are busy, with or without dispose', () => {
  const lib = join(repoRoot, 'dist', 'lib');
  for (const end of ['', 'loader.dispose();', 'process.exit(0);']) {
    const r = runScript(`
      import { BatchLoader } from ${JSON.stringify(join(lib, 'loader.js'))};
      import { makeDataset } from ${JSON.stringify(join(lib, 'data.js'))};
      const data = makeDataset('big', new Uint8Array(1024 * 3 * 32 * 32), 1024, 3, 32, null);
      const loader = new BatchLoader(data, { batchSize: 512, seed: 0, noise: 'gaussian', sigma: 0.1, labelDrop: 0, hflip: true, workers: 3, prefetch: 12 });
      loader.batch(0);
      console.log('ok');
      ${end}`);
    assert.is(r.signal, null, `killed by ${r.signal} (ending with '${end}'): ${r.err}`);
    assert.is(r.status, 0, `exit status ${r.status} (ending with '${end}'): ${r.err}`);
    assert.is(r.out, 'ok');
  }
});

test('a worker that cannot load the native addon fails the batch with a TarflowError instead of hanging', () => {
  // A copy of the compiled library with no node_modules or build beside it: the workers cannot load the addon.
  const dir = mkdtempSync(join(tmpdir(), 'tarflow-loader-'));
  try {
    cpSync(join(repoRoot, 'dist', 'lib'), join(dir, 'dist', 'lib'), { recursive: true });
    const lib = join(dir, 'dist', 'lib');
    const r = runScript(`
      import { BatchLoader } from ${JSON.stringify(join(lib, 'loader.js'))};
      import { makeDataset } from ${JSON.stringify(join(lib, 'data.js'))};
      const data = makeDataset('toy', new Uint8Array(16 * 4), 16, 1, 2, null);
      const loader = new BatchLoader(data, { batchSize: 4, seed: 0, noise: 'gaussian', sigma: 0.1, labelDrop: 0, hflip: false, workers: 2 });
      for (const attempt of [0, 1]) {
        try {
          loader.batch(attempt);
          console.log('no error');
        } catch (err) {
          console.log(err.name, err.code, err.message.split('\\n')[0]);
        }
      }
      await loader.closed;
      console.log('closed');`);
    assert.is(r.status, 0, r.err);
    const lines = r.out.split('\n');
    assert.is(lines.length, 3, r.out);
    assert.match(lines[0], /^TarflowError ERR_TARFLOW_[A-Z_]+ data loader worker: .*node-gyp-build/);
    assert.is(lines[1], lines[0], 'a failed loader keeps reporting its failure');
    assert.is(lines[2], 'closed');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test.run();
