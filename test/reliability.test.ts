/**
 * Reliability: no native leaks over many create/use/dispose cycles, collected handles are freed, two models at
 * once give the results each gives alone, and a training process killed at random moments leaves only whole
 * files behind and resumes to the bit-identical result.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { getBackend } from '../lib/backend.js';
import { TarFlow } from '../lib/model.js';
import { parseSafetensors, readSafetensors } from '../lib/safetensors.js';
import { serializeNpy } from '../lib/npy.js';
import { train } from '../lib/jobs.js';
import { repoRoot } from './helpers.js';

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;
const dir = mkdtempSync(join(tmpdir(), 'tarflow-rel-'));
const stress = process.env.TARFLOW_STRESS === '1';

const tick = () => new Promise((resolve) => setImmediate(resolve));

function rssMiB(): number {
  gc();
  gc();
  return process.memoryUsage().rss / 2 ** 20;
}

test('10,000 tensor create/view/use/dispose cycles keep resident memory flat', () => {
  const b = getBackend('cpu');
  const cycle = () => {
    const t = new b.Tensor('float32', [64, 1024]);
    const v = t.view(1024, [1024]);
    b.ops.normal(v, 1, 2, 3);
    b.ops.axpby(t, t, 2, 0);
    v.dispose();
    t.dispose();
  };
  for (let i = 0; i < 500; i++) cycle();
  const before = rssMiB();
  for (let i = 0; i < 10_000; i++) cycle(); // 2.6 GB allocated in all
  const growth = rssMiB() - before;
  assert.ok(growth < 32, `RSS grew by ${growth.toFixed(1)} MiB`);
});

test('models and their workspaces are freed by dispose', async () => {
  const cfg = { inChannels: 1, imgSize: 8, patchSize: 2, channels: 64, numBlocks: 2, layersPerBlock: 1, numClasses: 3 };
  const cycle = () => {
    const m = new TarFlow(cfg, { device: 'cpu' });
    const ws = m.workspace(8);
    m.setInputs(ws, new Float32Array(8 * 64).fill(0.1));
    m.forward(ws);
    m.dispose();
  };
  const ops = getBackend('cpu').ops;
  const buffersBefore = ops.nativeMemory().buffers;
  // The allocator's high-water mark settles after a few thousand cycles (handles wait for finalizers between
  // ticks); growth is measured after that.
  const warmup = stress ? 3_000 : 20;
  for (let i = 0; i < warmup; i++) {
    cycle();
    if (i % 50 === 49) await tick();
  }
  await tick();
  const before = rssMiB();
  for (let i = 0; i < (stress ? 7_000 : 1_000); i++) {
    cycle();
    // A service's event loop turns between requests; handle finalizers run then.
    if (i % 50 === 49) await tick();
  }
  await tick();
  const growth = rssMiB() - before;
  const after = ops.nativeMemory().buffers;
  assert.ok(after <= buffersBefore, `${after - buffersBefore} native buffers outlived dispose`);
  assert.ok(growth < 32, `RSS grew by ${growth.toFixed(1)} MiB`);
});

test('handles that are collected without dispose() are still freed', async () => {
  const b = getBackend('cpu');
  const make = () => {
    for (let i = 0; i < 200; i++) new b.Tensor('float32', [256, 1024]).fill(1); // 1 MiB each, never disposed
  };
  make();
  const before = rssMiB();
  for (let r = 0; r < 20; r++) {
    make(); // 4 GiB in all would not fit if finalizers did not free them
    await new Promise((resolve) => setImmediate(resolve));
    gc();
  }
  const growth = rssMiB() - before;
  assert.ok(growth < 400, `RSS grew by ${growth.toFixed(1)} MiB`);
});

// A toy dataset for the process-level tests.
const N = 48, S = 8;
const imagesPath = join(dir, 'x.npy');
const labelsPath = join(dir, 'y.npy');
{
  const images = new Uint8Array(N * S * S);
  const labels = new Int32Array(N);
  for (let i = 0; i < N; i++) {
    labels[i] = i % 3;
    for (let p = 0; p < S * S; p++) images[i * S * S + p] = (p % S) >> 1 === labels[i] ? 230 : (i * 13 + p * 7) % 31;
  }
  writeFileSync(imagesPath, serializeNpy(images, [N, S, S]));
  writeFileSync(labelsPath, serializeNpy(labels, [N]));
}
const spec = (out: string, steps: number) => ({ dataset: imagesPath, labels: labelsPath, batchSize: 16, steps, out, evalImages: 0, seed: 2, checkpointEvery: 1 });

test('two trainings at once give the same parameters as each alone', async () => {
  const alone = await train(spec(join(dir, 'alone'), 6));
  const [p, q] = await Promise.all([train(spec(join(dir, 'p'), 6)), train({ ...spec(join(dir, 'q'), 6), seed: 9 })]);
  const q2 = await train({ ...spec(join(dir, 'q2'), 6), seed: 9 });
  const bytes = (r: { checkpoint: string }) => parseSafetensors(readFileSync(r.checkpoint)).tensors.get('blocks.0.proj_in.weight')!.data;
  assert.equal(Buffer.from(bytes(p)), Buffer.from(bytes(alone)));
  assert.equal(Buffer.from(bytes(q)), Buffer.from(bytes(q2)));
  assert.not.equal(Buffer.from(bytes(p)), Buffer.from(bytes(q)));
});

function cliTrain(out: string, steps: number, resume: boolean) {
  const args = [join(repoRoot, 'dist', 'lib', 'cli.js'), 'train', '--dataset', imagesPath, '--labels', labelsPath, '--batch-size', '16',
    '--steps', String(steps), '--out', out, '--eval-images', '0', '--seed', '2', '--checkpoint-every', '1', ...(resume ? ['--resume'] : [])];
  return spawn(process.execPath, args, { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, TARFLOW_QUIET: '1' } });
}

test('SIGKILL at random moments never leaves a torn file; --resume reaches the uninterrupted result bit for bit', async () => {
  const steps = 150;
  const reference = await train(spec(join(dir, 'ref'), steps));
  const out = join(dir, 'killed');
  let seed = 12345;
  const rand = () => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32);
  let kills = 0;
  for (let attempt = 0; attempt < (stress ? 12 : 4); attempt++) {
    const started = existsSync(join(out, 'train-state.safetensors'));
    const child = cliTrain(out, steps, started);
    let stderr = '';
    child.stderr.on('data', (d) => (stderr += d));
    const delay = 400 + rand() * 1200;
    const exited = await new Promise<number | null>((resolve) => {
      const timer = setTimeout(() => {
        child.kill('SIGKILL');
        kills++;
      }, delay);
      child.on('exit', (code) => {
        clearTimeout(timer);
        resolve(code);
      });
    });
    if (exited === 0) break;
    assert.ok(exited === null, `training failed on its own: ${stderr}`);
    // Whatever was on disk when the process died must be complete.
    for (const f of ['checkpoint.safetensors', 'train-state.safetensors']) {
      const p = join(out, f);
      if (existsSync(p)) await readSafetensors(p);
    }
  }
  assert.ok(kills >= 1, 'no run was interrupted');
  const child = cliTrain(out, steps, existsSync(join(out, 'train-state.safetensors')));
  const code = await new Promise<number | null>((resolve) => child.on('exit', resolve));
  assert.is(code, 0);
  const a = await readSafetensors(reference.checkpoint);
  const b = await readSafetensors(join(out, 'checkpoint.safetensors'));
  let compared = 0;
  for (const [name, t] of a.tensors) {
    assert.ok(Buffer.from(t.data).equals(Buffer.from(b.tensors.get(name)!.data)), `${name} differs after kill and resume`);
    compared++;
  }
  assert.ok(compared > 10);
});

test.after(() => rmSync(dir, { recursive: true, force: true }));
test.run();
