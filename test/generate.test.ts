/** Batch offline generation: shards independent of batch size, resume after interruption, npz layout, NaN handling. */
import { test } from 'uvu';
import { execFileSync } from 'node:child_process';
import * as assert from 'uvu/assert';
import { accessSync, chmodSync, closeSync, constants, openSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, truncateSync, unlinkSync, writeFileSync, existsSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { saveModel } from '../lib/checkpoint.js';
import { TarFlow } from '../lib/model.js';
import { denoise, generate } from '../lib/sampling.js';
import { generateToDisk, sample } from '../lib/jobs.js';
import { parseNpz, serializeNpz } from '../lib/npz.js';
import { nameDigitsFor, pngFileName, type Manifest } from '../lib/batch-generate.js';
import { TarflowError } from '../lib/errors.js';
import { parseSafetensors, serializeSafetensors } from '../lib/safetensors.js';
import { gaussian, randomizeParams } from './helpers.js';

const dir = mkdtempSync(join(tmpdir(), 'tarflow-gen-'));
const ckpt = join(dir, 'model.safetensors');
const cfg = { inChannels: 3, imgSize: 8, patchSize: 4, channels: 64, numBlocks: 2, layersPerBlock: 1, numClasses: 4 };

test.before(async () => {
  const model = new TarFlow(cfg, { device: 'cpu', seed: 5 });
  randomizeParams(model, 11, 0.02);
  await saveModel(ckpt, model);
  model.dispose();
});

const base = { checkpoint: ckpt, count: 23, shardSize: 10, format: 'npz' as const, guidance: 1.5, seed: 4 };

test('two generation runs started into one folder: one writes, the other is refused', async () => {
  const out = join(dir, 'contended');
  const [a, b] = await Promise.allSettled([generateToDisk({ ...base, out }), generateToDisk({ ...base, out, seed: 9 })]);
  const lost = [a, b].filter((r): r is PromiseRejectedResult => r.status === 'rejected');
  assert.is(lost.length, 1, 'exactly one run writes');
  assert.match(String(lost[0].reason), /is being written by another run|already holds a generation run|written by another run while this one started/, String(lost[0].reason));
  const manifest = JSON.parse(readFileSync(join(out, 'manifest.json'), 'utf8')) as Manifest;
  assert.ok(manifest.complete);
  assert.is(manifest.options.seed, (a.status === 'fulfilled' ? 4 : 9));
  assert.not.ok(existsSync(join(out, '.tarflow-lock')));
});

test('npz shards hold uint8 (N, H, W, C) under arr_0, the same whatever the batch size', async () => {
  const a = join(dir, 'a'), b = join(dir, 'b');
  const ra = await generateToDisk({ ...base, out: a, batchSize: 3 });
  const rb = await generateToDisk({ ...base, out: b, batchSize: 23 });
  assert.is(ra.generated, 23);
  assert.is(rb.shards, 3);
  for (const shard of ['shard-00000.npz', 'shard-00001.npz', 'shard-00002.npz']) {
    assert.ok(readFileSync(join(a, shard)).equals(readFileSync(join(b, shard))), `${shard} differs between batch sizes`);
  }
  const arrays = parseNpz(readFileSync(join(a, 'shard-00002.npz')));
  const x = arrays.get('arr_0')!;
  assert.equal(x.shape, [3, 8, 8, 3]);
  assert.is(x.dtype, 'u1');
  assert.equal(Array.from(arrays.get('labels')!.data as Int32Array), [0, 1, 2], 'images 20..22 cycle through the classes');
  // Image 21 as generate() makes it, in (C, H, W) order, must match the shard's (H, W, C) layout.
  const model = new TarFlow(cfg, { device: 'cpu', noInit: true });
  const { loadModel } = await import('../lib/checkpoint.js');
  const loaded = await loadModel(ckpt, { device: 'cpu' });
  const one = generate(loaded, { count: 1, startIndex: 21, guidance: 1.5, seed: 4 });
  const data = x.data as Uint8Array;
  let same = true;
  for (let c = 0; c < 3; c++) for (let p = 0; p < 64; p++) if (one.images[c * 64 + p] !== data[1 * 192 + p * 3 + c]) same = false;
  assert.ok(same, 'image 21 differs from a direct draw of sample 21');
  model.dispose(); loaded.dispose();
});

test('the library samples a shipped model with its own guidance and denoising where they are left out, as the command line does', async () => {
  const run = async (name: string, extra: object) => {
    const out = join(dir, name);
    await generateToDisk({ checkpoint: 'mnist-cond', count: 2, shardSize: 2, format: 'npz', out, ...extra });
    return { manifest: JSON.parse(readFileSync(join(out, 'manifest.json'), 'utf8')) as Manifest, shard: readFileSync(join(out, 'shard-00000.npz')) };
  };
  const left = await run('shipped-defaults', {});
  assert.is(left.manifest.options.guidance, 2);
  assert.is(left.manifest.options.denoiseSigma, 0.1);
  assert.ok(left.shard.equals((await run('shipped-explicit', { guidance: 2, denoiseSigma: 0.1 })).shard), 'the images are drawn as the manifest says');
  assert.not.ok(left.shard.equals((await run('shipped-plain', { guidance: 0 })).shard));
  // The guidance shape options act on the model's own guidance, so they are not refused as if there were none.
  assert.is((await run('shipped-annealed', { annealed: true })).manifest.options.annealed, true);
  const grid = (name: string, extra: object) => sample({ checkpoint: 'mnist-cond', count: 2, labels: [3, 5], out: join(dir, name), ...extra }).then(() => readFileSync(join(dir, name)));
  const plain = await grid('defaults.png', {});
  assert.ok(plain.equals(await grid('explicit.png', { guidance: 2, denoiseSigma: 0.1 })), 'left out = mnist-cond\'s guidance 2 and sigma 0.1');
  assert.not.ok(plain.equals(await grid('unguided.png', { guidance: 0 })), 'guidance 0 given is kept');
  assert.not.ok(plain.equals(await grid('annealed.png', { attnTemp: 0.5 })));
});

test('denoising gives an image the same bits whatever batch it is in (a resume may change --batch-size)', async () => {
  const model = new TarFlow(cfg, { device: 'cpu', seed: 5 });
  randomizeParams(model, 11, 0.02);
  const per = 3 * 8 * 8, B = 6;
  const next = gaussian(3);
  const images = Float32Array.from({ length: B * per }, () => next());
  const labels = Int32Array.from({ length: B }, (_, i) => i % 4);
  const whole = denoise(model, images, labels, { sigma: 0.1 });
  let moved = 0;
  for (let i = 0; i < whole.length; i++) if (whole[i] !== images[i]) moved++;
  assert.ok(moved > whole.length / 2, `the score step moved ${moved} of ${whole.length} values`);
  for (const size of [1, 4]) {
    for (let start = 0; start < B; start += size) {
      const n = Math.min(size, B - start);
      const part = denoise(model, images.subarray(start * per, (start + n) * per), labels.subarray(start, start + n), { sigma: 0.1 });
      const same = part.every((v, i) => Object.is(v, whole[start * per + i]));
      assert.ok(same, `images ${start}..${start + n - 1} denoised in a batch of ${n} differ from the batch of ${B}`);
    }
  }
  model.dispose();
});

test('an interrupted run resumes from the manifest alone and ends with the same shards; an option given again must agree', async () => {
  const full = join(dir, 'a');
  const cut = join(dir, 'cut');
  await generateToDisk({ ...base, out: cut, batchSize: 5 });
  // Simulate a run killed after two shards: the manifest lists two, the third file is gone.
  const manifest = JSON.parse(readFileSync(join(cut, 'manifest.json'), 'utf8')) as Manifest;
  manifest.shards = manifest.shards.slice(0, 2);
  manifest.complete = false;
  writeFileSync(join(cut, 'manifest.json'), JSON.stringify(manifest));
  unlinkSync(join(cut, 'shard-00002.npz'));
  try {
    await generateToDisk({ ...base, out: cut });
    assert.unreachable('an existing run without resume must be refused');
  } catch (err) {
    assert.instance(err, TarflowError);
    assert.match((err as Error).message, /--resume/);
  }
  try {
    await generateToDisk({ ...base, out: cut, resume: true, guidance: 3, seed: 5, shardSize: 10 });
    assert.unreachable('resume with other options must be refused');
  } catch (err) {
    assert.is((err as TarflowError).code, 'ERR_TARFLOW_INVALID_ARGUMENT');
    const message = (err as Error).message;
    assert.match(message, /seed: expected 4, the value the run in .*cut.manifest\.json was started with, got 5; guidance: expected 1\.5, .*got 3; .*leave these out/);
    assert.not.match(message, /shardSize/, 'an option given with its recorded value is not listed');
  }
  // Only the batch size, which does not change the images, is given: the rest comes from the manifest.
  const r = await generateToDisk({ out: cut, resume: true, batchSize: 7 });
  assert.is(r.skipped, 20);
  assert.is(r.generated, 3);
  assert.ok(readFileSync(join(cut, 'shard-00002.npz')).equals(readFileSync(join(full, 'shard-00002.npz'))));
  const done = JSON.parse(readFileSync(join(cut, 'manifest.json'), 'utf8')) as Manifest;
  assert.ok(done.complete);
  assert.is(done.shards.length, 3);
});

test('a run from a checkpoint without a config in its metadata resumes from the manifest alone: the config is recorded', async () => {
  const file = parseSafetensors(readFileSync(ckpt));
  const { config: _config, ...metadata } = file.metadata;
  const bare = join(dir, 'bare.safetensors');
  writeFileSync(bare, serializeSafetensors(file.tensors, metadata));
  const out = join(dir, 'bare-run');
  await generateToDisk({ ...base, checkpoint: bare, config: cfg, out, count: 4, shardSize: 2 });
  const manifest = JSON.parse(readFileSync(join(out, 'manifest.json'), 'utf8')) as Manifest;
  const second = readFileSync(join(out, 'shard-00001.npz'));
  manifest.shards = manifest.shards.slice(0, 1);
  writeFileSync(join(out, 'manifest.json'), JSON.stringify(manifest));
  unlinkSync(join(out, 'shard-00001.npz'));
  const r = await generateToDisk({ out, resume: true });
  assert.is(r.generated, 2);
  assert.ok(readFileSync(join(out, 'shard-00001.npz')).equals(second));
});

/** The refusal of `spec`; fails the test if the run goes ahead. */
async function refusal(spec: Parameters<typeof generateToDisk>[0]): Promise<TarflowError> {
  try {
    await generateToDisk(spec);
  } catch (err) {
    assert.instance(err, TarflowError);
    return err as TarflowError;
  }
  assert.unreachable(`${JSON.stringify(spec)} was not refused`);
  throw new Error('unreachable');
}

test('a damaged manifest is refused, with or without resume, and the shards it described are left as they were', async () => {
  const out = join(dir, 'damaged');
  const spec = { ...base, out, count: 4, shardSize: 2 };
  await generateToDisk(spec);
  const manifestPath = join(out, 'manifest.json');
  const good = JSON.parse(readFileSync(manifestPath, 'utf8')) as Manifest;
  const shards = ['shard-00000.npz', 'shard-00001.npz'].map((f) => readFileSync(join(out, f)));
  const truncated = readFileSync(manifestPath, 'utf8').slice(0, 100);
  const cases: Array<[string, RegExp]> = [
    [truncated, /is damaged \(not JSON: /],
    [JSON.stringify({ format: 'tarflow-generate' }), /is damaged \(version: expected 1, got undefined\)/],
    [JSON.stringify({ ...good, shards: [{ ...good.shards[0], start: 'x' }] }), /shards\[0\]\.start: expected an integer >= 0, got "x"/],
    [JSON.stringify({ ...good, shards: [{ ...good.shards[0], files: 'shard-00000.npz' }] }), /shards\[0\]\.files: expected an array/],
    [JSON.stringify({ ...good, complete: undefined }), /complete: expected true or false, got undefined/],
    [JSON.stringify({ ...good, options: { ...good.options, count: 5 } }), /options\.count: expected 4 \(count\), got 5/],
    [JSON.stringify({ ...good, shards: [{ ...good.shards[0], index: 2 }] }), /shards\[0\]\.index: expected an integer in \[0, 2\), got 2/],
    [JSON.stringify({ ...good, shards: [{ ...good.shards[1], start: 0 }] }), /shards\[0\]\.start: expected 2 \(index x shardSize\), got 0/],
    [JSON.stringify({ ...good, shards: [{ ...good.shards[0], count: 1 }] }), /shards\[0\]\.count: expected 2, got 1/],
    [JSON.stringify({ ...good, shards: [good.shards[0], good.shards[0]], complete: false }), /shards\[1\]\.index: expected a shard not listed before, got 0 again/],
    [JSON.stringify({ ...good, shards: [{ ...good.shards[0], sha256: 'abc' }] }), /shards\[0\]\.sha256: expected a SHA-256 in hex, got "abc"/],
  ];
  for (const [text, why] of cases) {
    writeFileSync(manifestPath, text);
    for (const resume of [false, true]) {
      const err = await refusal({ ...spec, resume });
      assert.is(err.code, 'ERR_TARFLOW_FILE_FORMAT');
      assert.match(err.message, why);
      assert.ok(err.message.startsWith(manifestPath), err.message);
      assert.match(err.message, /delete the folder, or choose another out folder \(--out\)/);
    }
    assert.is(readFileSync(manifestPath, 'utf8'), text, 'the manifest was left as it was');
  }
  shards.forEach((bytes, k) => assert.ok(readFileSync(join(out, `shard-0000${k}.npz`)).equals(bytes), `shard ${k} was rewritten`));
});

test('resume with no manifest is refused, as train refuses it, and writes nothing', async () => {
  const out = join(dir, 'never-started');
  const err = await refusal({ ...base, out, resume: true });
  assert.is(err.code, 'ERR_TARFLOW_INVALID_ARGUMENT');
  assert.match(err.message, /^resume: .*never-started.manifest\.json does not exist, so there is no run to continue; start a new one without resume/);
  assert.not.ok(existsSync(out), 'no folder was made');
  assert.match((await refusal({ out, resume: true })).message, /does not exist/, 'with nothing else given either');
  assert.match((await refusal({ out, count: 4 })).message, /^checkpoint: expected a non-empty string/, 'a new run needs its checkpoint');
});

test('reduced precision is recorded in the manifest, and a resume must keep it', async () => {
  const out = join(dir, 'bf16');
  await generateToDisk({ ...base, out, count: 4, kvCache: 'bf16' });
  const manifest = JSON.parse(readFileSync(join(out, 'manifest.json'), 'utf8')) as Manifest;
  assert.equal([manifest.options.precision, manifest.options.kvCache], ['fp32', 'bf16']);
  const plain = JSON.parse(readFileSync(join(dir, 'a', 'manifest.json'), 'utf8')) as Manifest;
  assert.not.ok('kvCache' in plain.options, 'a full-precision manifest reads as before the option existed');
  for (const [other, differs] of [[{ kvCache: 'fp32' as const }, /kvCache: expected "bf16", .*got "fp32"/], [{ precision: 'bf16' as const }, /precision: expected "fp32", .*got "bf16"/]] as const) {
    try {
      await generateToDisk({ ...base, out, count: 4, resume: true, ...other });
      assert.unreachable(`resume with ${JSON.stringify(other)} must be refused`);
    } catch (err) {
      assert.match((err as Error).message, differs);
    }
  }
  assert.is((await generateToDisk({ ...base, out, count: 4, resume: true, kvCache: 'bf16' })).skipped, 4);
  assert.is((await generateToDisk({ out, resume: true })).skipped, 4, 'left out, the precision is the recorded one');
  assert.not.ok('bf16Kernel' in manifest, 'fp32 products: no bf16 kernel to record');
});

test('with bf16 products the manifest records their kernel; a resume on another kernel is told the shards differ by rounding', async () => {
  const out = join(dir, 'bf16-kernel');
  const spec = { ...base, out, count: 4, shardSize: 2, precision: 'bf16' as const };
  await generateToDisk(spec);
  const manifestPath = join(out, 'manifest.json');
  const manifest = JSON.parse(readFileSync(manifestPath, 'utf8')) as Manifest;
  const kernel = manifest.bf16Kernel;
  assert.ok(kernel !== undefined && ['amx', 'avx512bf16', 'reference'].includes(kernel), `recorded kernel ${kernel}`);
  // As if the first shard had come from another kernel.
  const other = kernel === 'reference' ? 'amx' : 'reference';
  writeFileSync(manifestPath, JSON.stringify({ ...manifest, bf16Kernel: other, shards: manifest.shards.slice(0, 1) }));
  const logs: string[] = [];
  const r = await generateToDisk({ ...spec, resume: true }, { onLog: (m) => logs.push(m) });
  assert.is(r.skipped, 2);
  assert.ok(logs.some((m) => m.includes(`bf16 products from the ${other} kernel, the rest will take them from the ${kernel} one`) &&
    m.includes(`TARFLOW_CPU_GEMM=${other} keeps the first`)), logs.join('\n'));
});

test('temperature scales the latent noise: 1 is the default, 0 maps every draw to the zero latent\'s image', async () => {
  const { loadModel } = await import('../lib/checkpoint.js');
  const model = await loadModel(ckpt, { device: 'cpu' });
  try {
    const plain = generate(model, { count: 4, seed: 3, guidance: 1.5 });
    assert.equal(generate(model, { count: 4, seed: 3, guidance: 1.5, temperature: 1 }).images, plain.images);
    const cooler = generate(model, { count: 4, seed: 3, guidance: 1.5, temperature: 0.5 });
    assert.not.equal(cooler.images, plain.images);
    // At 0 the seed no longer matters, and each image is what the inverse makes of a zero latent for its class.
    const zero = generate(model, { count: 4, seed: 3, guidance: 1.5, temperature: 0 });
    assert.equal(generate(model, { count: 4, seed: 8, guidance: 1.5, temperature: 0 }).images, zero.images);
    const { tokens: T, patchDim: D } = model.shape;
    const z = new model.backend.Tensor('float32', [4, T, D]);
    const out = new model.backend.Tensor('float32', [4, 3, 8, 8]);
    const labels = new model.backend.Tensor('int32', [4], Int32Array.of(0, 1, 2, 3));
    try {
      model.reverse(z, out, labels, { guidance: 1.5 });
      const bytes = Uint8Array.from(out.toArray(), (v) => Math.min(255, Math.max(0, Math.round((v + 1) * 127.5))));
      assert.equal(zero.images, bytes);
    } finally {
      z.dispose(); out.dispose(); labels.dispose();
    }
  } finally {
    model.dispose();
  }
});

test('a uniform-dequantization model maps samples back to the pixel bin they fall in; the checkpoint says which map', async () => {
  const { loadModel } = await import('../lib/checkpoint.js');
  const model = await loadModel(ckpt, { device: 'cpu' });
  const { tokens: T, patchDim: D } = model.shape;
  const z = new model.backend.Tensor('float32', [4, T, D]);
  const out = new model.backend.Tensor('float32', [4, 3, 8, 8]);
  const labels = new model.backend.Tensor('int32', [4], Int32Array.of(0, 1, 2, 3));
  try {
    assert.is(model.trainingNoise, 'gaussian', 'a checkpoint without the metadata is a Gaussian-noise model');
    model.reverse(z, out, labels, {});
    const x = out.toArray();
    const clamp = (v: number) => Math.min(255, Math.max(0, v));
    const gaussian = generate(model, { count: 4, temperature: 0 }).images;
    assert.equal(gaussian, Uint8Array.from(x, (v) => clamp(Math.round((v + 1) * 127.5))));
    model.trainingNoise = 'uniform';
    const uniform = generate(model, { count: 4, temperature: 0 }).images;
    assert.equal(uniform, Uint8Array.from(x, (v) => clamp(Math.floor((v + 1) * 128))));
    assert.not.equal(uniform, gaussian);
    const path = join(dir, 'uniform.safetensors');
    await saveModel(path, model);
    const again = await loadModel(path, { device: 'cpu' });
    try {
      assert.is(again.trainingNoise, 'uniform');
      assert.equal(generate(again, { count: 4, temperature: 0 }).images, uniform);
    } finally {
      again.dispose();
    }
  } finally {
    z.dispose(); out.dispose(); labels.dispose();
    model.dispose();
  }
});

test('a temperature other than 1 is recorded in the manifest, and a resume must keep it', async () => {
  const out = join(dir, 'cool');
  await generateToDisk({ ...base, out, count: 4, temperature: 0.8 });
  const manifest = JSON.parse(readFileSync(join(out, 'manifest.json'), 'utf8')) as Manifest;
  assert.is(manifest.options.temperature, 0.8);
  const plain = JSON.parse(readFileSync(join(dir, 'a', 'manifest.json'), 'utf8')) as Manifest;
  assert.not.ok('temperature' in plain.options, 'a manifest at temperature 1 reads as before the option existed');
  for (const temperature of [1, 0.7]) {
    try {
      await generateToDisk({ ...base, out, count: 4, resume: true, temperature });
      assert.unreachable(`resume at temperature ${temperature} must be refused`);
    } catch (err) {
      assert.match((err as Error).message, new RegExp(`temperature: expected 0\\.8, .*got ${temperature}`));
    }
  }
  assert.is((await generateToDisk({ ...base, out, count: 4, resume: true, temperature: 0.8 })).skipped, 4);
});

test('a resume from other weights with the same architecture is refused: shards of two models never mix', async () => {
  const out = join(dir, 'weights');
  const first = await generateToDisk({ ...base, out });
  assert.is(first.generated, 23);
  const manifestPath = join(out, 'manifest.json');
  const manifest = JSON.parse(readFileSync(manifestPath, 'utf8')) as Manifest;
  assert.match(manifest.checkpointSha256 ?? '', /^[0-9a-f]{64}$/);
  manifest.shards = manifest.shards.slice(0, 1);
  manifest.complete = false;
  writeFileSync(manifestPath, JSON.stringify(manifest));
  const other = join(dir, 'other.safetensors');
  const model = new TarFlow(cfg, { device: 'cpu', seed: 6 });
  randomizeParams(model, 12, 0.02);
  await saveModel(other, model);
  model.dispose();
  try {
    await generateToDisk({ ...base, out, checkpoint: other, resume: true });
    assert.unreachable('a resume from other weights must be refused');
  } catch (err) {
    assert.match((err as Error).message, /was written from other weights than .*other\.safetensors has now/);
  }
  const again = await generateToDisk({ ...base, out, resume: true });
  assert.is(again.skipped, 10);
  assert.is(again.generated, 13);
});

test('running out of memory inside a sampling batch frees what the batch had allocated', () => {
  const model = new TarFlow(cfg, { device: 'cpu', seed: 5 });
  const ops = model.ops;
  const batch = 1000;
  const live = ops.nativeMemory().bytes;
  // room for the batch's latents but not for its output images: the second allocation fails
  ops.setMemoryLimit(live + batch * 4 * 48 * 4 + 1000);
  try {
    generate(model, { count: batch, batchSize: batch });
    assert.unreachable('expected ERR_TARFLOW_OUT_OF_MEMORY');
  } catch (err) {
    assert.is((err as TarflowError).code, 'ERR_TARFLOW_OUT_OF_MEMORY');
  } finally {
    ops.setMemoryLimit(0);
  }
  assert.is(ops.nativeMemory().bytes, live, 'the latents of the failed batch were freed');
  model.dispose();
});

test('an unconditional model takes labels -1 (none) only; a start index whose noise offset would pass 2^53 is refused', () => {
  const model = new TarFlow({ ...cfg, numClasses: 0 }, { device: 'cpu', seed: 5 });
  try {
    const plain = generate(model, { count: 2 }).images;
    assert.equal(generate(model, { count: 2, labels: -1 }).images, plain);
    assert.equal(generate(model, { count: 2, labels: [-1, -1] }).images, plain);
    for (const labels of [-5, -0.5, [-1, 0], [-1]]) {
      assert.throws(() => generate(model, { count: 2, labels }), (e: TarflowError) => /labels: expected none, or -1 \(the model is unconditional\)/.test(e.message), String(labels));
    }
    assert.throws(() => generate(model, { count: 1, startIndex: 2 ** 50 }), (e: TarflowError) => /startIndex: expected an integer in \[0, \d+\], got 1125899906842624/.test(e.message));
  } finally {
    model.dispose();
  }
});

test('a resume that spells the same run differently (sigma 0, one class as a list) is accepted; the device is recorded', async () => {
  const out = join(dir, 'spelled');
  const common = { ...base, out, count: 4, shardSize: 2 };
  await generateToDisk({ ...common, labels: 2, denoiseSigma: 0 });
  const manifestPath = join(out, 'manifest.json');
  const manifest = JSON.parse(readFileSync(manifestPath, 'utf8')) as Manifest;
  assert.is(manifest.device, 'cpu');
  manifest.shards = manifest.shards.slice(0, 1);
  writeFileSync(manifestPath, JSON.stringify(manifest));
  const again = await generateToDisk({ ...common, labels: [2, 2, 2, 2], resume: true });
  assert.is(again.skipped, 2);
  try {
    await generateToDisk({ ...common, labels: [2, 2, 2, 1], resume: true });
    assert.unreachable('other labels are another run');
  } catch (err) {
    assert.match((err as Error).message, /labels: expected 2, .*got \[2, 2, 2, 1\]/);
  }
});

test('png format writes one file per image with its class in the name', async () => {
  const out = join(dir, 'png');
  const r = await generateToDisk({ ...base, out, format: 'png', count: 5, labels: 3 });
  assert.is(r.generated, 5);
  for (let i = 0; i < 5; i++) assert.ok(existsSync(join(out, `${String(i).padStart(6, '0')}-class3.png`)));
});

test('a sample that stays NaN/Inf is never written: the run fails with a clear error', async () => {
  const model = new TarFlow(cfg, { device: 'cpu', seed: 5 });
  // A huge log-scale bias overflows exp(a) in the inverse: every draw becomes Inf.
  const bias = model.params.get('blocks.1.proj_out.bias');
  const b = bias.toArray();
  for (let i = 0; i < 48; i++) b[i] = 200;
  bias.copyFrom(b as Float32Array);
  try {
    generate(model, { count: 2, maxRedraws: 2 });
    assert.unreachable('expected ERR_TARFLOW_NON_FINITE');
  } catch (err) {
    assert.is((err as TarflowError).code, 'ERR_TARFLOW_NON_FINITE');
    assert.match((err as Error).message, /sample 0 was NaN\/Inf in 3 draws/);
    assert.match((err as Error).message, /Gaussian noise/, 'without guidance the hint names the likely cause, not the guidance');
  }
  try {
    generate(model, { count: 1, labels: 0, guidance: 2, maxRedraws: 0 });
    assert.unreachable('expected ERR_TARFLOW_NON_FINITE');
  } catch (err) {
    assert.match((err as Error).message, /lower the guidance weight/);
  }
  model.dispose();
});

test('with denoising, a non-finite sample is redrawn (not fed to the score step), and the others are denoised', () => {
  const model = new TarFlow(cfg, { device: 'cpu', seed: 5 });
  randomizeParams(model, 12, 0.02);
  // A huge class-1 embedding rides the residual stream into proj_out: exp(a) overflows for class 1 only.
  const cls = model.params.get('blocks.1.class_embed');
  const e = cls.toArray();
  for (let i = 64; i < 128; i++) e[i] = 1e4;
  cls.copyFrom(e as Float32Array);
  try {
    generate(model, { count: 4, labels: [0, 1, 0, 2], denoiseSigma: 0.1, maxRedraws: 1 });
    assert.unreachable('class 1 can never be finite');
  } catch (err) {
    assert.is((err as TarflowError).code, 'ERR_TARFLOW_NON_FINITE');
    assert.match((err as Error).message, /sample 1 /);
  }
  const ok = generate(model, { count: 3, labels: [0, 2, 0], denoiseSigma: 0.1 });
  const plain = generate(model, { count: 3, labels: [0, 2, 0] });
  assert.is(ok.redraws.length, 0);
  assert.not.equal(Array.from(ok.images), Array.from(plain.images), 'denoising changed the images');
  model.dispose();
});

test('a model trained with uniform dequantization refuses a denoising step (sigma 0 is none) in generate, denoise, sample and generateToDisk', async () => {
  const model = new TarFlow(cfg, { device: 'cpu', seed: 5 });
  randomizeParams(model, 12, 0.02);
  model.trainingNoise = 'uniform';
  const uniform = join(dir, 'uniform-denoise.safetensors');
  await saveModel(uniform, model);
  const refused = async (what: string, name: string, call: () => unknown) => {
    try {
      await call();
    } catch (err) {
      assert.is((err as TarflowError).code, 'ERR_TARFLOW_INVALID_ARGUMENT', what);
      assert.match((err as Error).message, new RegExp(`^${name}: the model was trained with uniform dequantization \\(its checkpoint records noise 'uniform'\\), ` +
        'not with Gaussian noise, so its samples hold no noise of level 0\\.1 for the denoising step to remove'), what);
      return;
    }
    assert.unreachable(`${what} denoised a likelihood model's samples`);
  };
  try {
    await refused('generate', 'denoiseSigma', () => generate(model, { count: 2, labels: [0, 1], denoiseSigma: 0.1 }));
    await refused('denoise', 'sigma', () => denoise(model, new Float32Array(2 * 192), Int32Array.of(0, 1), { sigma: 0.1 }));
    assert.equal(generate(model, { count: 2, labels: [0, 1], denoiseSigma: 0 }).images, generate(model, { count: 2, labels: [0, 1] }).images);
    const out = join(dir, 'uniform-denoised');
    await refused('generateToDisk', 'denoiseSigma', () => generateToDisk({ checkpoint: uniform, count: 2, out, denoiseSigma: 0.1 }));
    await refused('sample', 'denoiseSigma', () => sample({ checkpoint: uniform, count: 2, out, denoiseSigma: 0.1 }));
    assert.not.ok(existsSync(out), 'a refused run made its folder');
    // The same model trained with Gaussian noise denoises.
    model.trainingNoise = 'gaussian';
    assert.not.equal(generate(model, { count: 2, labels: [0, 1], denoiseSigma: 0.1 }).images, generate(model, { count: 2, labels: [0, 1] }).images);
  } finally {
    model.dispose();
  }
});

test('npz reader rejects damaged archives', () => {
  const good = serializeNpz({ arr_0: { data: new Uint8Array([1, 2, 3, 4]), shape: [2, 2] } });
  assert.equal(Array.from(parseNpz(good).get('arr_0')!.data as Uint8Array), [1, 2, 3, 4]);
  const flipped = good.slice();
  flipped[100] ^= 0xff; // inside the member's data: CRC must catch it
  for (const bad of [good.subarray(0, 40), flipped, new Uint8Array(10)]) {
    try {
      parseNpz(bad);
      assert.unreachable('accepted a damaged archive');
    } catch (err) {
      assert.is((err as TarflowError).code, 'ERR_TARFLOW_FILE_FORMAT');
    }
  }
});

/** Rejects with the job's error; fails the test if the job succeeds. */
async function failure(job: Promise<unknown>, what: string): Promise<TarflowError> {
  try {
    await job;
  } catch (err) {
    assert.instance(err, TarflowError);
    return err as TarflowError;
  }
  assert.unreachable(`${what} succeeded`);
  throw new Error('unreachable');
}

test('a run stopped in its first shard resumes: the manifest is written before anything is drawn', async () => {
  const out = join(dir, 'stopped-first');
  const ac = new AbortController();
  const spec = { ...base, out, count: 20, shardSize: 20, batchSize: 2 };
  const tasks: string[] = [];
  const err = await failure(generateToDisk(spec, { inline: true, signal: ac.signal, onProgress: (p) => { tasks.push(p.task); ac.abort(); } }), 'a stopped run');
  assert.is(err.code, 'ERR_TARFLOW_ABORTED');
  assert.equal([...new Set(tasks)], ['generate'], 'progress names the job');
  assert.match(err.message, /0 of 1 shards are written and resume: true \(--resume\) continues/);
  const manifest = JSON.parse(readFileSync(join(out, 'manifest.json'), 'utf8')) as Manifest;
  assert.equal([manifest.shards, manifest.complete], [[], false]);
  const r = await generateToDisk({ out, resume: true });
  assert.equal([r.generated, r.skipped], [20, 0]);
  const whole = join(dir, 'stopped-first-whole');
  await generateToDisk({ ...spec, out: whole });
  assert.ok(readFileSync(join(out, 'shard-00000.npz')).equals(readFileSync(join(whole, 'shard-00000.npz'))));
});

test('a run that fails on NaN/Inf in its first shard leaves a run that a resume with more redraws continues', async () => {
  const model = new TarFlow(cfg, { device: 'cpu', seed: 5 });
  // As in the NaN test below: every draw overflows, so the resume fails too, but on the draw, not on the folder.
  const bias = model.params.get('blocks.1.proj_out.bias');
  bias.copyFrom((bias.toArray() as Float32Array).fill(200, 0, 48));
  const inf = join(dir, 'inf.safetensors');
  await saveModel(inf, model);
  model.dispose();
  const out = join(dir, 'nan-first');
  const first = await failure(generateToDisk({ ...base, checkpoint: inf, out, count: 4, maxRedraws: 0 }), 'an overflowing run');
  assert.is(first.code, 'ERR_TARFLOW_NON_FINITE');
  assert.ok(existsSync(join(out, 'manifest.json')), 'no manifest: the run could not be resumed');
  const again = await failure(generateToDisk({ out, resume: true, maxRedraws: 1 }), 'an overflowing resume');
  assert.is(again.code, 'ERR_TARFLOW_NON_FINITE', again.message);
  assert.match(again.message, /in 2 draws/);
});

test('a new run refuses an out folder that holds other files, naming them; a killed start\'s claim and manifest temp file do not count', async () => {
  const out = join(dir, 'taken');
  mkdirSync(out);
  writeFileSync(join(out, '000000-class0.png'), 'the user\'s own image');
  writeFileSync(join(out, 'notes.txt'), 'notes');
  const err = await failure(generateToDisk({ ...base, out, format: 'png', count: 2 }), 'a run into a folder with files');
  assert.is(err.code, 'ERR_TARFLOW_INVALID_ARGUMENT');
  assert.match(err.message, /^out: the folder ".*taken" is not empty \(it holds "000000-class0\.png", "notes\.txt"\); .*choose another out folder \(--out\) or empty this one \(resume: true \(--resume\) continues a run only in a folder that holds its manifest\.json\)/);
  assert.is(readFileSync(join(out, '000000-class0.png'), 'utf8'), 'the user\'s own image');
  assert.equal(readdirSync(out).sort(), ['000000-class0.png', 'notes.txt']);
  const killed = join(dir, 'killed-start');
  mkdirSync(killed);
  writeFileSync(join(killed, '.tarflow-lock'), JSON.stringify({ pid: 2 ** 22 + 12345, host: hostname(), started: new Date(0).toISOString(), token: '0123456789abcdef' }));
  writeFileSync(join(killed, '.manifest.json.4242.0123456789ab.tmp'), '{"format":');
  const r = await generateToDisk({ ...base, out: killed, format: 'png', count: 2 });
  assert.is(r.generated, 2);
  assert.is(r.staleTempFiles, 1);
  assert.equal(readdirSync(killed).sort(), ['000000-class0.png', '000001-class1.png', 'manifest.json']);
});

test('sample --out DIR refuses a folder that holds other files; a grid file may go into one', async () => {
  const out = join(dir, 'sample-taken');
  mkdirSync(out);
  writeFileSync(join(out, '000000-class0.png'), 'mine');
  const err = await failure(sample({ checkpoint: ckpt, count: 2, out }), 'sample into a folder with files');
  assert.match(err.message, /^out: the folder ".*sample-taken" is not empty \(it holds "000000-class0\.png"\); .*choose another folder \(--out\) or empty this one$/);
  assert.is(readFileSync(join(out, '000000-class0.png'), 'utf8'), 'mine');
  assert.is((await sample({ checkpoint: ckpt, count: 2, out: join(out, 'grid.png') })).count, 2);
});

test('a resume checks the finished shards\' files and draws again those missing, cut or not listed (npz), saying why', async () => {
  const out = join(dir, 'broken-npz');
  const spec = { ...base, out, count: 40, shardSize: 10 };
  await generateToDisk(spec);
  const names = [0, 1, 2, 3].map((k) => `shard-0000${k}.npz`);
  const original = names.map((f) => readFileSync(join(out, f)));
  unlinkSync(join(out, names[1]));
  truncateSync(join(out, names[2]), original[2].length - 50);
  const manifestPath = join(out, 'manifest.json');
  const manifest = JSON.parse(readFileSync(manifestPath, 'utf8')) as Manifest;
  manifest.shards[3].files = [];
  writeFileSync(manifestPath, JSON.stringify(manifest));
  const logs: string[] = [];
  const r = await generateToDisk({ out, resume: true }, { onLog: (m) => logs.push(m) });
  assert.equal([r.skipped, r.generated, r.redrawnShards], [10, 30, 3]);
  const log = logs.find((m) => m.includes('finished shards are drawn again')) ?? logs.join('\n');
  assert.match(log, /3 of 4 finished shards are drawn again/);
  assert.match(log, /shard 1: shard-00001\.npz is missing; shard 2: shard-00002\.npz is cut short.*; shard 3: the manifest lists no files for it \(this run writes shard-00003\.npz\)/);
  names.forEach((f, k) => assert.ok(readFileSync(join(out, f)).equals(original[k]), `${f} differs from the first run's`));
  const done = JSON.parse(readFileSync(manifestPath, 'utf8')) as Manifest;
  assert.ok(done.complete);
  assert.equal(done.shards.map((s) => s.files.length), [1, 1, 1, 1]);
  assert.is((await generateToDisk({ out, resume: true })).redrawnShards, 0, 'whole shards are kept');
});

test('a resume draws again a PNG shard with a cut or foreign file', async () => {
  const out = join(dir, 'broken-png');
  await generateToDisk({ ...base, out, format: 'png', count: 9, shardSize: 3 });
  const cut = join(out, '000004-class0.png');
  const foreign = join(out, '000007-class3.png');
  const [cutBytes, foreignBytes] = [readFileSync(cut), readFileSync(foreign)];
  truncateSync(cut, cutBytes.length - 12);
  writeFileSync(foreign, readFileSync(join(dir, 'png', '000000-class3.png')).subarray(0, 16)); // a PNG's start only
  const logs: string[] = [];
  const r = await generateToDisk({ out, resume: true }, { onLog: (m) => logs.push(m) });
  assert.equal([r.skipped, r.generated, r.redrawnShards], [3, 6, 2]);
  assert.match(logs.join('\n'), /shard 1: 000004-class0\.png is cut short \(no IEND chunk at its end\); shard 2: 000007-class3\.png is not a PNG/);
  assert.ok(readFileSync(cut).equals(cutBytes));
  assert.ok(readFileSync(foreign).equals(foreignBytes));
});

test('a resume draws again a shard whose file another run replaced (right form, other images: its SHA-256 differs)', async () => {
  const out = join(dir, 'swapped-npz'), other = join(dir, 'swapped-other');
  await generateToDisk({ ...base, out, count: 20, shardSize: 10 });
  await generateToDisk({ ...base, out: other, count: 20, shardSize: 10, seed: 99 });
  const mine = readFileSync(join(out, 'shard-00001.npz'));
  writeFileSync(join(out, 'shard-00001.npz'), readFileSync(join(other, 'shard-00001.npz')));
  const logs: string[] = [];
  const r = await generateToDisk({ out, resume: true }, { onLog: (m) => logs.push(m) });
  assert.equal([r.skipped, r.generated, r.redrawnShards], [10, 10, 1]);
  assert.match(logs.join('\n'), /shard 1: shard-00001\.npz was changed since the run wrote it \(SHA-256 differs\)/);
  assert.ok(readFileSync(join(out, 'shard-00001.npz')).equals(mine), 'drawn again as the run first drew it');
  const manifest = JSON.parse(readFileSync(join(out, 'manifest.json'), 'utf8')) as Manifest;
  assert.ok(manifest.shards.every((sh) => /^[0-9a-f]{64}$/.test(sh.sha256 ?? '')), 'every shard records its hash');
});

test('a resume draws again an .npz shard of another image count, even from a manifest without hashes', async () => {
  const out = join(dir, 'npz-count'), wide = join(dir, 'npz-count-wide');
  await generateToDisk({ ...base, out, count: 20, shardSize: 10 });
  await generateToDisk({ ...base, out: wide, count: 20, shardSize: 20 });
  const mine = readFileSync(join(out, 'shard-00000.npz'));
  writeFileSync(join(out, 'shard-00000.npz'), readFileSync(join(wide, 'shard-00000.npz'))); // 20 images where 10 belong
  const manifestPath = join(out, 'manifest.json');
  const manifest = JSON.parse(readFileSync(manifestPath, 'utf8')) as Manifest;
  for (const shard of manifest.shards) delete shard.sha256; // as written before shards were hashed
  writeFileSync(manifestPath, JSON.stringify(manifest));
  const logs: string[] = [];
  const r = await generateToDisk({ out, resume: true }, { onLog: (m) => logs.push(m) });
  assert.is(r.redrawnShards, 1);
  assert.match(logs.join('\n'), /shard 0: shard-00000\.npz is damaged \(its arr_0\.npy does not hold exactly its 10 images\)/);
  assert.ok(readFileSync(join(out, 'shard-00000.npz')).equals(mine));
});

test('a run whose manifest records guidance shape options without guidance (as earlier versions wrote) resumes', async () => {
  const out = join(dir, 'idle-shape'), whole = join(dir, 'idle-shape-whole');
  const spec = { ...base, guidance: 0, count: 20, shardSize: 10 };
  await generateToDisk({ ...spec, out: whole });
  await generateToDisk({ ...spec, out });
  const manifestPath = join(out, 'manifest.json');
  const manifest = JSON.parse(readFileSync(manifestPath, 'utf8')) as Manifest;
  manifest.options = { ...manifest.options, attnTemp: 0.5, annealed: true };
  manifest.shards = manifest.shards.slice(0, 1);
  manifest.complete = false;
  writeFileSync(manifestPath, JSON.stringify(manifest));
  const r = await generateToDisk({ out, resume: true });
  assert.equal([r.skipped, r.generated], [10, 10]);
  assert.ok(readFileSync(join(out, 'shard-00001.npz')).equals(readFileSync(join(whole, 'shard-00001.npz'))), 'the options changed no image');
});

test('a resume draws again a shard whose file became a FIFO, without waiting on it', async () => {
  if (process.platform === 'win32') return;
  const out = join(dir, 'fifo-shard');
  await generateToDisk({ ...base, out, count: 20, shardSize: 10 });
  const mine = readFileSync(join(out, 'shard-00000.npz'));
  unlinkSync(join(out, 'shard-00000.npz'));
  execFileSync('mkfifo', [join(out, 'shard-00000.npz')]);
  const logs: string[] = [];
  const r = await generateToDisk({ out, resume: true }, { onLog: (m) => logs.push(m) });
  assert.is(r.redrawnShards, 1);
  assert.match(logs.join('\n'), /shard 0: shard-00000\.npz is not a file/);
  assert.ok(readFileSync(join(out, 'shard-00000.npz')).equals(mine));
});

test('a resume from a checkpoint path that is a FIFO is refused as loadModel refuses one, without waiting on it', async () => {
  if (process.platform === 'win32') return;
  const out = join(dir, 'fifo-checkpoint');
  await generateToDisk({ ...base, out, count: 4 });
  const fifo = join(dir, 'pipe.safetensors');
  execFileSync('mkfifo', [fifo]);
  let timer: NodeJS.Timeout | undefined;
  const hung = new Promise<'hung'>((resolve) => { timer = setTimeout(() => resolve('hung'), 20_000); });
  try {
    const outcome = await Promise.race([failure(generateToDisk({ out, resume: true, checkpoint: fifo }), 'a resume from a FIFO'), hung]);
    assert.ok(outcome !== 'hung', 'the resume waited on the FIFO for a writer');
    const err = outcome as TarflowError;
    assert.is(err.code, 'ERR_TARFLOW_INVALID_ARGUMENT');
    assert.match(err.message, /pipe\.safetensors: not a regular file but a FIFO/);
  } finally {
    clearTimeout(timer);
    // a reader still waiting on the FIFO is let go
    try { closeSync(openSync(fifo, constants.O_WRONLY | constants.O_NONBLOCK)); } catch { /* no reader waiting */ }
  }
});

test('a manifest.json or a claim on the folder that is a FIFO is refused, without waiting on it', async () => {
  if (process.platform === 'win32') return;
  // (a resume into a folder with no manifest.json stops at that before it claims the folder: no case for the claim)
  for (const [name, resumes] of [['manifest.json', [false, true]], ['.tarflow-lock', [false]]] as const) {
    for (const resume of resumes) {
      const out = join(dir, `fifo-${name}-${resume}`);
      mkdirSync(out);
      const fifo = join(out, name);
      execFileSync('mkfifo', [fifo]);
      let timer: NodeJS.Timeout | undefined;
      const hung = new Promise<'hung'>((resolve) => { timer = setTimeout(() => resolve('hung'), 20_000); });
      try {
        const outcome = await Promise.race([failure(generateToDisk({ ...base, out, count: 4, resume }), `a run into a folder whose ${name} is a FIFO`), hung]);
        assert.ok(outcome !== 'hung', `the run waited on ${name}, a FIFO, for a writer`);
        assert.match((outcome as TarflowError).message, name === 'manifest.json' ? /manifest\.json: not a regular file but a FIFO/
          : /is being written by another run \(a lock file that names no process\)/);
      } finally {
        clearTimeout(timer);
        try { closeSync(openSync(fifo, constants.O_WRONLY | constants.O_NONBLOCK)); } catch { /* no reader waiting */ }
      }
    }
  }
});

test('labels given as an Int32Array are recorded as a list, and a resume compares them by value', async () => {
  const out = join(dir, 'typed-labels');
  const labels = Int32Array.from({ length: 20 }, (_, i) => (i * 3) % 4);
  const spec = { ...base, out, count: 20, shardSize: 10, labels };
  await generateToDisk(spec);
  const manifestPath = join(out, 'manifest.json');
  const manifest = JSON.parse(readFileSync(manifestPath, 'utf8')) as Manifest;
  assert.equal(manifest.options.labels, Array.from(labels));
  const second = readFileSync(join(out, 'shard-00001.npz'));
  writeFileSync(manifestPath, JSON.stringify({ ...manifest, shards: manifest.shards.slice(0, 1), complete: false }));
  assert.equal((await generateToDisk({ out, resume: true })).generated, 10, 'left out, the labels are the recorded list');
  assert.ok(readFileSync(join(out, 'shard-00001.npz')).equals(second));
  assert.is((await generateToDisk({ ...spec, resume: true })).skipped, 20, 'the same labels as an Int32Array again');
  assert.is((await generateToDisk({ ...spec, labels: Array.from(labels), resume: true })).skipped, 20, 'and as a list');
  // A manifest written by earlier versions holds the typed array as an object: read as the list it was.
  writeFileSync(manifestPath, JSON.stringify({ ...manifest, options: { ...manifest.options, labels: { ...Array.from(labels) } }, shards: manifest.shards.slice(0, 1) }));
  assert.is((await generateToDisk({ ...spec, resume: true })).generated, 10);
});

test('a resume from a checkpoint of another architecture is refused as another model, before its tensors are loaded', async () => {
  const out = join(dir, 'arch');
  await generateToDisk({ ...base, out, count: 4 });
  const wide = join(dir, 'arch128.safetensors');
  const model = new TarFlow({ ...cfg, channels: 128 }, { device: 'cpu', seed: 5 });
  await saveModel(wide, model);
  model.dispose();
  const err = await failure(generateToDisk({ out, resume: true, checkpoint: wide }), 'a resume from another model');
  assert.is(err.code, 'ERR_TARFLOW_INVALID_ARGUMENT');
  assert.match(err.message, /manifest\.json was written with another model than .*arch128\.safetensors \(its config differs\); resume from the same checkpoint, or use another out folder \(--out\)$/);
});

test('a resume removes the temp files that a killed run\'s writes left (only of its own files, in the writer\'s pattern)', async () => {
  const out = join(dir, 'temps');
  await generateToDisk({ ...base, out, format: 'png', count: 4, shardSize: 2 });
  const stale = ['.000003-class3.png.4242.0123456789ab.tmp', '.shard-00000.npz.77.abcdefabcdef.tmp', '.manifest.json.9.000000000000.tmp',
    '.000001-class-1.png.5.0123456789ab.tmp']; // an image drawn without a class (label -1)
  const others = ['.notes.txt.4242.0123456789ab.tmp', '.000003-class3.png.4242.xyz.tmp', 'keep.tmp'];
  for (const name of [...stale, ...others]) writeFileSync(join(out, name), 'x');
  const logs: string[] = [];
  const r = await generateToDisk({ out, resume: true }, { onLog: (m) => logs.push(m) });
  assert.is(r.staleTempFiles, 4);
  assert.match(logs.join('\n'), /removed 4 temp files that a killed run's writes left behind/);
  for (const name of stale) assert.not.ok(existsSync(join(out, name)), name);
  for (const name of others) assert.ok(existsSync(join(out, name)), name);
});

test('PNG names have as many digits as the last index needs (at least 6), so they sort in image order; the manifest records it', async () => {
  assert.equal([nameDigitsFor(1), nameDigitsFor(1_000_000), nameDigitsFor(1_000_001), nameDigitsFor(2 ** 32)], [6, 6, 7, 10]);
  const digits = nameDigitsFor(1_000_001);
  const names = [100_001, 1_000_000, 999_999].map((i) => pngFileName(i, digits, 0));
  assert.equal(names, ['0100001-class0.png', '1000000-class0.png', '0999999-class0.png']);
  assert.equal([...names].sort(), [names[0], names[2], names[1]]);
  // A run of that many images, stopped at once: its manifest says how its names are written.
  const out = join(dir, 'million');
  const ac = new AbortController();
  await failure(generateToDisk({ ...base, out, format: 'png', count: 1_000_001, shardSize: 2 }, { inline: true, signal: ac.signal, onProgress: () => ac.abort() }), 'a stopped run');
  assert.is((JSON.parse(readFileSync(join(out, 'manifest.json'), 'utf8')) as Manifest).nameDigits, 7);
  assert.is((JSON.parse(readFileSync(join(dir, 'png', 'manifest.json'), 'utf8')) as Manifest).nameDigits, 6);
});

test('an out folder that exists but cannot be written is named as such, not as one that could not be created', async () => {
  const readOnly = join(dir, 'read-only');
  mkdirSync(readOnly);
  chmodSync(readOnly, 0o555);
  try {
    // As root, permissions do not stop a write: then a folder of the system that refuses one, where there is one.
    const folder = [readOnly, '/proc/1'].find((p) => {
      try {
        accessSync(p, constants.W_OK | constants.X_OK);
        return false;
      } catch {
        return existsSync(p) && statSync(p).isDirectory();
      }
    });
    if (folder === undefined) {
      console.log('  (skipped: no folder here refuses this user a write)');
      return;
    }
    const err = await failure(generateToDisk({ ...base, out: folder, count: 2 }), 'a run into a read-only folder');
    assert.match(err.message, /^out: the folder ".*" exists but is not writable \(E[A-Z]+\): .*; make it writable \(chmod u\+w, or a read-write mount\) or choose another folder$/);
  } finally {
    chmodSync(readOnly, 0o755);
  }
});

test.after(() => rmSync(dir, { recursive: true, force: true }));
test.run();
