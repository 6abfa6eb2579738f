/**
 * Dataset readers: image folders (decoded with sharp), .npy/.npz layouts, CIFAR-10 batches, IDX pairs, and each
 * way a file can be refused. Every fixture is written at test time into a temporary folder.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawnSync } from 'node:child_process';
import { closeSync, constants, mkdirSync, mkdtempSync, openSync, rmSync, symlinkSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import sharp from 'sharp';
import { loadDataset, imageArrayLayout, makeDataset, matchClasses, type ImageDataset, type DatasetLoadOptions } from '../lib/data.js';
import { TarFlow } from '../lib/model.js';
import { Trainer } from '../lib/train.js';
import { loadModel, saveModel } from '../lib/checkpoint.js';
import { evaluateBpd } from '../lib/evaluate.js';
import { readSafetensors, writeSafetensors } from '../lib/safetensors.js';
import { validateConfig } from '../lib/config.js';
import { CIFAR10_CLASSES } from '../lib/cifar.js';
import { serializeNpy, type NpyData } from '../lib/npy.js';
import { serializeNpz } from '../lib/npz.js';
import { repoRoot } from './helpers.js';
import { TarflowError } from '../lib/errors.js';
import { runTrain } from '../lib/train-task.js';

const dir = mkdtempSync(join(tmpdir(), 'tarflow-datasets-'));
test.after(() => rmSync(dir, { recursive: true, force: true }));

type RGB = [number, number, number];

/** A w x h RGB image whose colour is fill(x, y). */
function rawImage(w: number, h: number, fill: (x: number, y: number) => RGB): Buffer {
  const b = Buffer.alloc(w * h * 3);
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) b.set(fill(x, y), 3 * (y * w + x));
  return b;
}

async function writeImage(path: string, w: number, h: number, fill: (x: number, y: number) => RGB, format: 'png' | 'jpeg' = 'png'): Promise<void> {
  const img = sharp(rawImage(w, h, fill), { raw: { width: w, height: h, channels: 3 } });
  await (format === 'png' ? img.png() : img.jpeg({ quality: 95 })).toFile(path);
}

function folder(...parts: string[]): string {
  const p = join(dir, ...parts);
  mkdirSync(p, { recursive: true });
  return p;
}

/** Pixel (c, y, x) of image n. */
function px(ds: ImageDataset, n: number, c: number, y: number, x: number): number {
  const S = ds.size;
  return ds.images[((n * ds.channels + c) * S + y) * S + x]!;
}

function near(actual: number, expected: number, tol: number, what: string): void {
  assert.ok(Math.abs(actual - expected) <= tol, `${what}: ${actual} is not within ${tol} of ${expected}`);
}

async function rejects(p: Promise<unknown>, code: string, pattern: RegExp): Promise<void> {
  let err: (Error & { code?: string }) | undefined;
  try {
    await p;
  } catch (e) {
    err = e as Error & { code?: string };
  }
  assert.ok(err, `expected a rejection matching ${pattern}`);
  assert.is(err!.code, code, err!.message);
  assert.match(err!.message, pattern);
}

// ---------------------------------------------------------------------------------------------------------
// image folders

const RED: RGB = [255, 0, 0];
const GREEN: RGB = [0, 255, 0];
const BLUE: RGB = [0, 0, 255];
const classRoot = folder('classes');

test.before(async () => {
  // class names chosen so that code-unit order (upper case first) differs from creation order and from locale order
  const cat = folder('classes', 'cat');
  const dog = folder('classes', 'dog');
  const zebra = folder('classes', 'Zebra');
  folder('classes', '.cache');
  await writeImage(join(cat, 'wide.png'), 40, 30, () => RED);
  await writeImage(join(dog, 'tall.jpg'), 30, 50, () => BLUE, 'jpeg');
  // a true 1-channel PNG: the grey path of the decoder, not an RGB image that happens to be grey
  await sharp(Buffer.alloc(20 * 20, 128), { raw: { width: 20, height: 20, channels: 1 } }).toColourspace('b-w').png().toFile(join(dog, 'grey.png'));
  await sharp({ create: { width: 24, height: 24, channels: 4, background: { r: 200, g: 100, b: 50, alpha: 0.5 } } }).png().toFile(join(zebra, 'rgba.PNG'));
  await writeImage(join(folder('classes', '.cache'), 'hidden.png'), 8, 8, () => GREEN);
  writeFileSync(join(dog, 'notes.txt'), 'not an image');
  writeFileSync(join(classRoot, '.DS_Store'), 'finder litter');
});

test('fixtures are what the tests claim: one grey PNG, one RGBA PNG', async () => {
  assert.is((await sharp(join(classRoot, 'dog', 'grey.png')).metadata()).channels, 1);
  assert.is((await sharp(join(classRoot, 'Zebra', 'rgba.PNG')).metadata()).channels, 4);
});

test('a class folder tree: classes sorted by name give the labels; other files and hidden entries are skipped', async () => {
  const progress: Array<[number, number]> = [];
  const ds = await loadDataset(classRoot, 'train', { size: 8, channels: 3, onProgress: (d, t) => progress.push([d, t]), concurrency: 2 });
  assert.equal(ds.classNames, ['Zebra', 'cat', 'dog']);
  assert.is(ds.numClasses, 3);
  assert.is(ds.count, 4);
  assert.is(ds.channels, 3);
  assert.is(ds.size, 8);
  // files in class order, then name order inside a class: rgba.PNG, wide.png, grey.png, tall.jpg
  assert.equal(Array.from(ds.labels!), [0, 1, 2, 2]);
  assert.equal(progress[0], [0, 4]);
  assert.equal(progress[progress.length - 1], [4, 4]);
  assert.ok(progress.every(([d], i) => i === 0 || d > progress[i - 1]![0]), 'progress only moves forward');
  for (const [y, x] of [[0, 0], [4, 4], [7, 7]] as const) {
    // RGBA: alpha dropped (PIL's convert('RGB')), not composited on black or white
    near(px(ds, 0, 0, y, x), 200, 2, 'rgba R');
    near(px(ds, 0, 1, y, x), 100, 2, 'rgba G');
    near(px(ds, 0, 2, y, x), 50, 2, 'rgba B');
    assert.equal([px(ds, 1, 0, y, x), px(ds, 1, 1, y, x), px(ds, 1, 2, y, x)], RED, 'png red');
    assert.equal([px(ds, 2, 0, y, x), px(ds, 2, 1, y, x), px(ds, 2, 2, y, x)], [128, 128, 128], 'grey to RGB');
    near(px(ds, 3, 0, y, x), 0, 8, 'jpeg R');
    near(px(ds, 3, 2, y, x), 255, 8, 'jpeg B');
  }
});

test('channels 1 converts to grey with ITU-R 601 luma, as PIL does', async () => {
  const ds = await loadDataset(classRoot, 'train', { size: 6, channels: 1 });
  assert.is(ds.channels, 1);
  assert.is(ds.images.length, 4 * 36);
  near(px(ds, 0, 0, 3, 3), Math.round(0.299 * 200 + 0.587 * 100 + 0.114 * 50), 2, 'rgba to grey');
  assert.is(px(ds, 1, 0, 3, 3), 76, 'pure red is 76 in PIL, not the 127 of a CIE L* conversion');
  assert.is(px(ds, 2, 0, 3, 3), 128, 'grey stays grey');
  near(px(ds, 3, 0, 3, 3), 29, 3, 'blue jpeg');
});

test('resize on the shorter side, then centre-crop: a flat folder is unlabelled', async () => {
  const flat = folder('flat');
  // red | green | blue bands, 45 | 60 | 45 px: a centre crop keeps the middle 30 px, all green, while a squash would
  // keep all three colours and a left crop red (the margin keeps the resampling kernel off the band edges)
  await writeImage(join(flat, 'a_bands.png'), 150, 30, (x) => (x < 45 ? RED : x < 105 ? GREEN : BLUE));
  // left half red, right half blue, wider than tall: the crop keeps both halves, in place
  await writeImage(join(flat, 'b_split.png'), 80, 40, (x) => (x < 40 ? RED : BLUE));
  // the same bands stacked: a tall image is cropped top and bottom
  await writeImage(join(flat, 'c_tall.png'), 30, 150, (_x, y) => (y < 45 ? RED : y < 105 ? GREEN : BLUE));
  const ds = await loadDataset(flat, 'train', { size: 10 });
  assert.is(ds.labels, null);
  assert.is(ds.classNames, undefined);
  assert.is(ds.numClasses, 0);
  assert.is(ds.count, 3);
  for (const n of [0, 2]) {
    for (let y = 0; y < 10; y++) {
      for (let x = 0; x < 10; x++) {
        near(px(ds, n, 1, y, x), 255, 3, `image ${n} green at ${y},${x}`);
        near(px(ds, n, 0, y, x), 0, 3, `image ${n} red at ${y},${x}`);
      }
    }
  }
  // 80 x 40 -> 20 x 10, crop columns 5..14: the red/blue edge falls between output columns 4 and 5 (a left- or
  // right-aligned crop would be all red or all blue; a mirrored one blue on the left)
  for (let y = 0; y < 10; y++) {
    for (const x of [0, 1]) assert.equal([px(ds, 1, 0, y, x), px(ds, 1, 2, y, x)], [255, 0], `left at ${y},${x}`);
    for (const x of [8, 9]) assert.equal([px(ds, 1, 0, y, x), px(ds, 1, 2, y, x)], [0, 255], `right at ${y},${x}`);
    assert.ok(px(ds, 1, 0, y, 3) > 200 && px(ds, 1, 2, y, 3) < 55, `still red just left of the edge at row ${y}`);
    assert.ok(px(ds, 1, 2, y, 6) > 200 && px(ds, 1, 0, y, 6) < 55, `already blue just right of the edge at row ${y}`);
  }
});

test('a root with train/ and test/ folders is read per split', async () => {
  for (const [split, n] of [['train', 2], ['test', 1]] as const) {
    for (const cls of ['x', 'y']) {
      const d = folder('splits', split, cls);
      for (let i = 0; i < n; i++) await writeImage(join(d, `${i}.png`), 8, 8, () => (cls === 'x' ? RED : BLUE));
    }
  }
  const train = await loadDataset(join(dir, 'splits'), 'train', { size: 4 });
  const testSplit = await loadDataset(join(dir, 'splits'), 'test', { size: 4 });
  assert.equal(train.classNames, ['x', 'y']);
  assert.equal(Array.from(train.labels!), [0, 0, 1, 1]);
  assert.equal(Array.from(testSplit.labels!), [0, 1]);
  assert.is(px(testSplit, 1, 2, 0, 0), 255);
});

test('a stray huge label is refused instead of sizing a class embedding for it', async () => {
  const images = new Uint8Array(2 * 4);
  assert.is(makeDataset('ok', images, 2, 1, 2, Int32Array.of(0, 255)).numClasses, 256);
  await rejects(Promise.resolve().then(() => makeDataset('stray', images, 2, 1, 2, Int32Array.of(0, 100_000))), 'ERR_TARFLOW_DATA',
    /stray: label 100000 of image 1 is beyond the 100,000 classes a model may have/);
  const config = { inChannels: 1, imgSize: 8, patchSize: 4, channels: 64, numBlocks: 1, layersPerBlock: 1 };
  assert.is(validateConfig({ ...config, numClasses: 100_000 }).numClasses, 100_000);
  await rejects(Promise.resolve().then(() => validateConfig({ ...config, numClasses: 100_001 })), 'ERR_TARFLOW_CONFIG', /numClasses.*100000/);
});

test('makeDataset takes typed arrays only, and says so itself rather than leaving it to the trainer', async () => {
  const images = new Uint8Array(8 * 16);
  await rejects(Promise.resolve().then(() => makeDataset('mine', images, 8, 1, 4, [0, 1, 2, 3, 0, 1, 2, 3] as never)), 'ERR_TARFLOW_DTYPE',
    /^mine: labels: expected an Int32Array of class indices, or null for unlabelled images, got \[0, 1, 2, 3, .*; convert with Int32Array\.from\(labels\)/);
  await rejects(Promise.resolve().then(() => makeDataset('mine', images, 8, 1, 4, undefined as never)), 'ERR_TARFLOW_DTYPE', /mine: labels: expected .*got undefined/);
  await rejects(Promise.resolve().then(() => makeDataset('mine', Array.from(images) as never, 8, 1, 4, null)), 'ERR_TARFLOW_DTYPE',
    /^mine: images: expected a Uint8Array .*; convert with Uint8Array\.from\(images\)/);
  assert.is(makeDataset('mine', images, 8, 1, 4, Int32Array.from([0, 1, 2, 3, 0, 1, 2, 3])).numClasses, 4);
});

test("a test split is labelled by the train split's classes, by name, even when it lacks some", async () => {
  for (const [split, classes] of [['train', ['a', 'b', 'c']], ['test', ['a', 'c']]] as const) {
    for (const cls of classes) await writeImage(join(folder('gaps', split, cls), '0.png'), 8, 8, () => (cls === 'c' ? BLUE : RED));
  }
  const testSplit = await loadDataset(join(dir, 'gaps'), 'test', { size: 4 });
  assert.equal(Array.from(testSplit.labels!), [0, 2], "test/c/ is train's class 2, not 1");
  assert.is(testSplit.numClasses, 3);
  assert.equal(testSplit.classNames, ['a', 'b', 'c']);
  await writeImage(join(folder('gaps', 'test', 'd'), '0.png'), 8, 8, () => RED);
  await rejects(loadDataset(join(dir, 'gaps'), 'test', { size: 4 }), 'ERR_TARFLOW_DATA', /test class 'd' has no folder in .*train/);
});

test('image folder rejections: empty folder, no images, empty class, mixed layout, corrupt files, abort', async () => {
  await rejects(loadDataset(folder('empty')), 'ERR_TARFLOW_DATA', /empty: the folder has no PNG or JPEG images/);
  writeFileSync(join(folder('texts'), 'readme.md'), '# hi');
  await rejects(loadDataset(join(dir, 'texts')), 'ERR_TARFLOW_DATA', /no PNG or JPEG images \(1 other file skipped, e\.g\. readme\.md\)/);
  folder('emptyclass', 'a');
  await writeImage(join(folder('emptyclass', 'b'), '1.png'), 4, 4, () => RED);
  await rejects(loadDataset(join(dir, 'emptyclass')), 'ERR_TARFLOW_DATA', /class folder 'a' has no PNG or JPEG images/);
  await writeImage(join(folder('mixed'), 'loose.png'), 4, 4, () => RED);
  await writeImage(join(folder('mixed', 'cls'), '1.png'), 4, 4, () => RED);
  await rejects(loadDataset(join(dir, 'mixed')), 'ERR_TARFLOW_DATA', /both loose images \(loose\.png.*\) and class folders \(cls\)/);

  const corrupt = folder('corrupt', 'cls');
  await writeImage(join(corrupt, 'a_good.png'), 16, 16, () => GREEN);
  const jpeg = await sharp(rawImage(32, 32, (x, y) => [x * 8, y * 8, 99]), { raw: { width: 32, height: 32, channels: 3 } }).jpeg().toBuffer();
  writeFileSync(join(corrupt, 'b_broken.jpg'), jpeg.subarray(0, jpeg.length >> 1));
  await rejects(loadDataset(join(dir, 'corrupt'), 'train', { size: 8 }), 'ERR_TARFLOW_FILE_FORMAT', /b_broken\.jpg: cannot decode the image .*re-save it or delete it/);
  // libjpeg only warns about stray bytes before a marker, and PIL loads such files, so they must not fail a dataset
  const dqt = jpeg.indexOf(Buffer.from([0xff, 0xdb]));
  const quirky = folder('quirky');
  writeFileSync(join(quirky, 'stray.jpg'), Buffer.concat([jpeg.subarray(0, dqt), Buffer.from([1, 2, 3, 4]), jpeg.subarray(dqt)]));
  const ok = await loadDataset(quirky, 'train', { size: 8 });
  near(px(ok, 0, 2, 4, 4), 99, 12, 'stray-byte JPEG decodes');
  const garbage = folder('garbage');
  writeFileSync(join(garbage, 'fake.png'), 'this is text, not a PNG');
  await rejects(loadDataset(garbage), 'ERR_TARFLOW_FILE_FORMAT', /fake\.png: cannot decode the image/);

  await rejects(loadDataset(classRoot, 'train', { size: 8, channels: 2 }), 'ERR_TARFLOW_INVALID_ARGUMENT', /channels must be 1 \(grey\) or 3/);
  const controller = new AbortController();
  controller.abort();
  await rejects(loadDataset(classRoot, 'train', { size: 8, signal: controller.signal }), 'ERR_TARFLOW_ABORTED', /aborted after 0 of 4 images/);
  await rejects(loadDataset(classRoot, 'train', { labels: 'y.npy' }), 'ERR_TARFLOW_DATA', /takes its labels from its class folders; drop labels \(--labels\)/);
});

test('a link in an image folder that points nowhere is refused and named; a hidden one stays ignored', async () => {
  const cls = folder('links', 'cls');
  await writeImage(join(cls, 'a.png'), 8, 8, () => RED);
  symlinkSync(join(dir, 'nowhere', 'x.png'), join(cls, '.hidden.png'));
  assert.is((await loadDataset(join(dir, 'links'), 'train', { size: 4 })).count, 1);
  symlinkSync(join(dir, 'nowhere', 'x.png'), join(cls, 'broken.png'));
  await rejects(loadDataset(join(dir, 'links'), 'train', { size: 4 }), 'ERR_TARFLOW_DATA',
    /links\/cls\/broken\.png: the symbolic link points nowhere \(to .*nowhere\/x\.png\); make it point to the image or folder meant, or remove it/);
});

// ---------------------------------------------------------------------------------------------------------
// arrays

const N = 2, C = 3, S = 4;
/** Reference images (N, C, S, S) with every value distinct, so any transposition error shows. */
const chw = Uint8Array.from({ length: N * C * S * S }, (_, i) => (i * 5 + 3) % 251);
function toHwc(src: Uint8Array, n: number, c: number, s: number): Uint8Array {
  const out = new Uint8Array(src.length);
  for (let k = 0; k < n; k++) for (let ch = 0; ch < c; ch++) for (let p = 0; p < s * s; p++) out[(k * s * s + p) * c + ch] = src[(k * c + ch) * s * s + p]!;
  return out;
}

function npz(name: string, arrays: Record<string, { data: NpyData; shape: number[] }>): string {
  const path = join(dir, name);
  writeFileSync(path, serializeNpz(arrays));
  return path;
}

async function load(path: string, split: 'train' | 'test' = 'train', options: DatasetLoadOptions = {}): Promise<ImageDataset> {
  return loadDataset(path, split, options);
}

test('npz layouts: (N,C,H,W), (N,H,W,C), (N,H,W) and flat channel-first rows all read as (N,C,S,S)', async () => {
  const nchw = await load(npz('nchw.npz', { images: { data: chw, shape: [N, C, S, S] }, labels: { data: Int32Array.from([1, 0]), shape: [N] } }));
  assert.equal(Array.from(nchw.images), Array.from(chw));
  assert.equal(Array.from(nchw.labels!), [1, 0]);
  assert.is(nchw.channels, 3);
  const nhwc = await load(npz('nhwc.npz', { x: { data: toHwc(chw, N, C, S), shape: [N, S, S, C] } }));
  assert.equal(Array.from(nhwc.images), Array.from(chw));
  assert.is(nhwc.labels, null);
  const grey = await load(npz('nhw.npz', { data: { data: chw.subarray(0, N * S * S), shape: [N, S, S] }, y: { data: Uint8Array.from([1, 0]), shape: [N] } }));
  assert.is(grey.channels, 1);
  assert.equal(Array.from(grey.images), Array.from(chw.subarray(0, N * S * S)));
  assert.equal(Array.from(grey.labels!), [1, 0]);
  // flat rows as in Imagenet32/64: 48 = 3*4*4 is not a square, so RGB is inferred; labels are int64 counted from 1
  const flat = await load(npz('flat.npz', { data: { data: chw, shape: [N, C * S * S] }, labels: { data: BigInt64Array.from([2n, 1n]), shape: [N] } }), 'train', { labelBase: 1 });
  assert.is(flat.channels, 3);
  assert.is(flat.size, 4);
  assert.equal(Array.from(flat.images), Array.from(chw));
  assert.equal(Array.from(flat.labels!), [1, 0]);
  assert.is(flat.numClasses, 2);
  // 16 values per row is 1 x 4 x 4 and cannot be 3 x S x S
  const flatGrey = await load(npz('flatgrey.npz', { arr_0: { data: chw.subarray(0, 32), shape: [N, 16] } }));
  assert.equal([flatGrey.channels, flatGrey.size], [1, 4]);
});

test('the (N,H,W,C) rule: channel-last only when the last dim is 1 or 3 and the second is not; channels breaks ties', () => {
  assert.equal(imageArrayLayout([5, 32, 32, 3], 't'), { count: 5, channels: 3, size: 32, channelsLast: true });
  assert.equal(imageArrayLayout([5, 3, 32, 32], 't'), { count: 5, channels: 3, size: 32, channelsLast: false });
  assert.equal(imageArrayLayout([5, 1, 28, 28], 't'), { count: 5, channels: 1, size: 28, channelsLast: false });
  assert.equal(imageArrayLayout([5, 3, 3, 3], 't'), { count: 5, channels: 3, size: 3, channelsLast: false });
  assert.equal(imageArrayLayout([5, 3, 3, 1], 't', 1), { count: 5, channels: 1, size: 3, channelsLast: true });
  assert.equal(imageArrayLayout([5, 12], 't', 3), { count: 5, channels: 3, size: 2, channelsLast: false });
  assert.equal(imageArrayLayout([5, 3072], 't'), { count: 5, channels: 3, size: 32, channelsLast: false });
  assert.equal(imageArrayLayout([5, 784], 't'), { count: 5, channels: 1, size: 28, channelsLast: false });
});

test('Keras-style x_train/x_test npz follows the split; .npy takes a labels path (the older call form)', async () => {
  const path = npz('keras.npz', {
    x_train: { data: chw.subarray(0, 2 * 16), shape: [2, 4, 4] }, y_train: { data: Uint8Array.from([1, 0]), shape: [2] },
    x_test: { data: chw.subarray(0, 16), shape: [1, 4, 4] }, y_test: { data: Uint8Array.from([9]), shape: [1] },
  });
  assert.equal(Array.from((await load(path, 'train')).labels!), [1, 0]);
  assert.equal(Array.from((await load(path, 'test')).labels!), [9]);
  const x = join(dir, 'x.npy');
  const y = join(dir, 'y.npy');
  writeFileSync(x, serializeNpy(toHwc(chw, N, C, S), [N, S, S, C]));
  writeFileSync(y, serializeNpy(BigInt64Array.from([1n, 0n]), [N]));
  const ds = await loadDataset(x, 'train', y);
  assert.equal(Array.from(ds.images), Array.from(chw));
  assert.equal(Array.from(ds.labels!), [1, 0]);
  assert.is(ds.numClasses, 2);
});

test('array rejections: label range, label count, non-square, bad rows, dtype, shape asked for, unknown file', async () => {
  const img = { data: chw, shape: [N, C, S, S] };
  await rejects(load(npz('base1.npz', { images: img, labels: { data: Int32Array.from([0, 5]), shape: [N] } }), 'train', { labelBase: 1 }),
    'ERR_TARFLOW_DATA', /base1\.npz:labels: label 0 of image 0 is outside the declared range .*drop labelBase 1/);
  await rejects(load(npz('neg.npz', { images: img, labels: { data: Int32Array.from([2, -1]), shape: [N] } })),
    'ERR_TARFLOW_DATA', /neg\.npz:labels: label -1 of image 1 is outside the declared range/);
  await rejects(load(npz('count.npz', { images: img, labels: { data: Int32Array.from([0, 1, 2]), shape: [3] } })),
    'ERR_TARFLOW_DATA', /count\.npz:labels: labels must be shaped \(2,\) to match the 2 images, got \(3,\)/);
  await rejects(load(npz('float.npz', { images: img, labels: { data: Float32Array.from([0, 1]), shape: [N] } })),
    'ERR_TARFLOW_DTYPE', /float\.npz:labels: labels have floating-point dtype/);
  await rejects(load(npz('both.npz', { images: img, labels: { data: Int32Array.from([0, 1]), shape: [N] }, y: { data: Int32Array.from([0, 1]), shape: [N] } })),
    'ERR_TARFLOW_DATA', /both 'labels' and 'y'/);
  await rejects(load(npz('rect.npz', { images: { data: new Uint8Array(2 * 4 * 5), shape: [2, 4, 5] } })), 'ERR_TARFLOW_DATA', /rect\.npz:images: images are 4 x 5 .*not square/);
  await rejects(load(npz('rows.npz', { images: { data: new Uint8Array(2 * 50), shape: [2, 50] } })), 'ERR_TARFLOW_DATA', /rows of 50 values are neither 1 x S x S nor 3 x S x S/);
  await rejects(load(npz('rgba.npz', { images: { data: new Uint8Array(2 * 4 * 4 * 4), shape: [2, 4, 4, 4] } })), 'ERR_TARFLOW_DATA', /neither 1 nor 3 channels.*RGBA/);
  await rejects(load(npz('u16.npz', { images: { data: new Uint16Array(2 * 16), shape: [2, 4, 4] } })), 'ERR_TARFLOW_DATA', /images must be uint8 .*got 'u2'/);
  await rejects(load(npz('nokey.npz', { a: img, b: img })), 'ERR_TARFLOW_DATA', /found no images among 'a', 'b'/);
  await rejects(load(npz('size.npz', { images: img }), 'train', { size: 8 }), 'ERR_TARFLOW_SHAPE', /holds 3 x 4 x 4 images, not the 3 x 8 x 8 asked for/);
  const csv = join(dir, 'table.csv');
  writeFileSync(csv, '1,2,3\n');
  await rejects(loadDataset(csv), 'ERR_TARFLOW_DATA', /table\.csv: unknown dataset file type/);
  await rejects(loadDataset(join(dir, 'missing.npy')), 'ERR_TARFLOW_DATA', /missing\.npy: no such file or folder/);
  const truncated = join(dir, 'trunc.npy');
  writeFileSync(truncated, serializeNpy(chw, [N, C, S, S]).subarray(0, 100));
  await rejects(loadDataset(truncated), 'ERR_TARFLOW_FILE_FORMAT', /trunc\.npy: .*the file is truncated/);
});

test('training labels that leave a class without images are refused, with the likely fix; a test split may miss classes', async () => {
  const x = join(dir, 'gaps-x.npy');
  writeFileSync(x, serializeNpy(new Uint8Array(8 * 16), [8, 4, 4]));
  const labels = (name: string, values: number[]) => {
    const path = join(dir, name);
    writeFileSync(path, serializeNpy(BigInt64Array.from(values.map(BigInt)), [values.length]));
    return path;
  };
  const oneBased = labels('gaps-1based.npy', [1, 2, 3, 1, 2, 3, 1, 2]);
  await rejects(loadDataset(x, 'train', { labels: oneBased }), 'ERR_TARFLOW_DATA',
    /gaps-1based\.npy: 1 of the 4 classes 0\.\.3 has no image \(0\); .*trained on nothing; labels look 1-based: pass --label-base 1 \(labelBase: 1\)/);
  assert.is((await loadDataset(x, 'train', { labels: oneBased, labelBase: 1 })).numClasses, 3);
  const stray = labels('gaps-stray.npy', [0, 1, 2, 99, 0, 1, 2, 0]);
  await rejects(loadDataset(x, 'train', { labels: stray }), 'ERR_TARFLOW_DATA',
    /gaps-stray\.npy: 96 of the 100 classes 0\.\.99 have no image \(3, 4, 5, 6, 7, \.\.\.\); .*largest \(99, image 3\).*the labels skip classes; remap the 4 classes used to 0\.\.3, e\.g\. with numpy's np\.unique\(y, return_inverse=True\)/);
  // scoring a model on a small test set that misses some of its classes is fine
  assert.is((await loadDataset(x, 'test', { labels: stray })).numClasses, 100);
  // and so is training one whose classes are fixed already (fine-tuning, a config, an unconditional model)
  assert.is((await loadDataset(x, 'train', { labels: stray, classesFixed: true })).numClasses, 100);
  // with labelBase 1 the classes are named as the file numbers them
  await rejects(loadDataset(x, 'train', { labels: labels('gaps-base1.npy', [1, 3, 1, 3, 1, 3, 1, 3]), labelBase: 1 }), 'ERR_TARFLOW_DATA',
    /1 of the 3 classes 1\.\.3 has no image \(2\); .*the labels skip classes/);
  await rejects(load(npz('gaps.npz', { images: { data: new Uint8Array(8 * 16), shape: [8, 4, 4] }, y: { data: Int32Array.from([1, 2, 1, 2, 1, 2, 1, 2]), shape: [8] } })),
    'ERR_TARFLOW_DATA', /gaps\.npz:y: 1 of the 3 classes 0\.\.2 has no image \(0\).*labels look 1-based/);
  const d = folder('idx-gaps');
  writeFileSync(join(d, 'train-images-idx3-ubyte'), idx([3, 2, 2], new Uint8Array(12)));
  writeFileSync(join(d, 'train-labels-idx1-ubyte'), idx([3], Uint8Array.from([0, 200, 1])));
  // IDX labels have no labelBase, so a missing class 0 there is not put down to 1-based labels
  await rejects(loadDataset(join(d, 'train-images-idx3-ubyte')), 'ERR_TARFLOW_DATA',
    /train-labels-idx1-ubyte: 198 of the 201 classes 0\.\.200 have no image \(2, 3, 4, 5, 6, \.\.\.\); .*remap the 3 classes used to 0\.\.2/);
});

test('a model keeps the class names of its image folder; evaluating a folder with some classes matches them by name', async () => {
  const root = folder('named-classes');
  for (const [cls, colour] of [['cat', RED], ['dog', GREEN], ['emu', BLUE]] as const) {
    folder('named-classes', 'train', cls);
    for (let i = 0; i < 6; i++) await writeImage(join(root, 'train', cls, `${i}.png`), 8, 8, () => colour);
  }
  folder('dogs-only', 'dog');
  for (let i = 0; i < 4; i++) await writeImage(join(dir, 'dogs-only', 'dog', `${i}.png`), 8, 8, () => GREEN);
  folder('birds', 'bird');
  await writeImage(join(dir, 'birds', 'bird', '0.png'), 8, 8, () => BLUE);
  const train = await loadDataset(join(root, 'train'), 'train', { size: 8, channels: 3 });
  const model = new TarFlow({ inChannels: 3, imgSize: 8, patchSize: 4, channels: 64, numBlocks: 1, layersPerBlock: 1, numClasses: 3 }, { device: 'cpu', seed: 1 });
  assert.throws(() => new Trainer(model, train, { batchSize: 6, steps: 1, lr: -1 }), /lr/);
  assert.is(model.classNames, null, 'a refused Trainer leaves the model as it was');
  const trainer = new Trainer(model, train, { batchSize: 6, steps: 2 });
  trainer.trainStep();
  assert.equal(model.classNames, ['cat', 'dog', 'emu']);
  // The training state keeps them; a trainer whose model names its classes otherwise is refused.
  const statePath = join(dir, 'named-state.safetensors');
  await trainer.saveState(statePath);
  trainer.dispose();
  const state = await readSafetensors(statePath);
  assert.is(state.metadata.class_names, '["cat","dog","emu"]');
  const other = new TarFlow(model.config, { device: 'cpu', seed: 1 });
  other.classNames = ['ant', 'bee', 'cat'];
  assert.throws(() => new Trainer(other, train, { batchSize: 6, steps: 2 }), /class(es)? 'dog', 'emu' are not among the model's classes \(ant, bee, cat\)/);
  other.classNames = ['emu', 'dog', 'cat'];
  const reordered = new Trainer(other, train, { batchSize: 6, steps: 2 });
  assert.equal([...reordered.data.labels!.subarray(0, 7)], [2, 2, 2, 2, 2, 2, 1], 'matched by name: cat is class 2 of this model');
  assert.throws(() => reordered.restoreState(state, statePath), /whose classes are cat, dog, emu, but this model's are emu, dog, cat/);
  reordered.dispose();
  other.dispose();
  const path = join(dir, 'named.safetensors');
  await saveModel(path, model);
  const loaded = await loadModel(path);
  assert.equal(loaded.classNames, ['cat', 'dog', 'emu']);
  const dogs = await loadDataset(join(dir, 'dogs-only'), 'test', { size: 8, channels: 3 });
  assert.equal([...dogs.labels!], [0, 0, 0, 0], 'on its own the folder numbers dog 0');
  assert.equal([...matchClasses(dogs, loaded.classNames).labels!], [1, 1, 1, 1], "matched: the model's dog");
  // scored under the model's 'dog', the bits/dim are those of the same images labelled 1 by hand
  const byName = evaluateBpd(loaded, dogs, { seed: 3 }).bitsPerDim;
  const byHand = evaluateBpd(loaded, makeDataset('dogs by hand', dogs.images, 4, 3, 8, Int32Array.from([1, 1, 1, 1])), { seed: 3 }).bitsPerDim;
  assert.is(byName, byHand);
  const birds = await loadDataset(join(dir, 'birds'), 'test', { size: 8, channels: 3 });
  assert.throws(() => evaluateBpd(loaded, birds), /birds: class 'bird' is not among the model's classes \(cat, dog, emu\); rename the class folders/);
  const bad = join(dir, 'bad-names.safetensors');
  // saveModel writes class_names from the model only; a hand-made file can still say anything
  await rejects(saveModel(bad, model, { metadata: { class_names: '["cat","cat","emu"]' } }), 'ERR_TARFLOW_INVALID_ARGUMENT', /^options\.metadata\.class_names: expected an entry other than config, format, noise, class_names/);
  const good = await readSafetensors(path);
  await writeSafetensors(bad, good.tensors, { ...good.metadata, class_names: '["cat","cat","emu"]' });
  await rejects(loadModel(bad), 'ERR_TARFLOW_CHECKPOINT', /metadata 'class_names': expected a list of 3 distinct names/);
  loaded.dispose();
  model.dispose();
});

test('matchClasses refuses a label that has no class name instead of numbering it class 0', () => {
  // A dataset built by hand (or changed after makeDataset): its label 2 names no class of its two.
  const ds = makeDataset('hand-made', new Uint8Array(2 * 3 * 8 * 8), 2, 3, 8, Int32Array.from([0, 1]), ['a', 'b']);
  ds.labels![1] = 2;
  assert.throws(() => matchClasses(ds, ['b', 'a']), /hand-made: label 2 of image 1 has no class name \(2 names: a, b\)/);
  const model = new TarFlow({ inChannels: 3, imgSize: 8, patchSize: 4, channels: 64, numBlocks: 1, layersPerBlock: 1, numClasses: 2 }, { device: 'cpu', seed: 1 });
  model.classNames = ['b', 'a'];
  try {
    assert.throws(() => evaluateBpd(model, ds), /label 2 of image 1 has no class name/);
  } finally {
    model.dispose();
  }
});

test('resuming a named-class run with a config of another class count is refused for the config, not blamed on the state', async () => {
  const root = folder('resume-classes');
  for (const [cls, colour] of [['cat', RED], ['dog', GREEN]] as const) {
    folder('resume-classes', cls);
    for (let i = 0; i < 4; i++) await writeImage(join(root, cls, `${i}.png`), 8, 8, () => colour);
  }
  const ctx = { progress: () => {}, log: () => {}, aborted: () => false };
  const out = join(dir, 'resume-classes-run');
  const shape = { inChannels: 3, imgSize: 8, patchSize: 4, channels: 64, numBlocks: 1, layersPerBlock: 1 };
  await runTrain({ dataset: root, out, steps: 2, batchSize: 4, evalImages: 0, config: { ...shape, numClasses: 2 } }, ctx);
  const outcome = await runTrain({ dataset: root, out, resume: true, steps: 3, config: { ...shape, numClasses: 3 } }, ctx).then(() => 'resumed', (e: unknown) => e);
  assert.ok(outcome instanceof TarflowError && outcome.code === 'ERR_TARFLOW_CHECKPOINT', String(outcome));
  assert.match((outcome as Error).message, /was saved for a different model config \(.*numClasses 2 saved, 3 now.*\); resume with the same preset\/config/);
});

test('a device or FIFO is refused before it is opened or read, as the dataset and as its labels', async () => {
  const fifo = join(dir, 'pipe');
  const made = spawnSync('mkfifo', [fifo]);
  assert.is(made.status, 0, `mkfifo: ${made.stderr}`);
  // Should the check regress, a reader blocked on the FIFO is let go, so the test fails rather than hangs.
  const unblock = setTimeout(() => {
    try { closeSync(openSync(fifo, constants.O_WRONLY | constants.O_NONBLOCK)); } catch { /* no reader waiting */ }
  }, 3000);
  try {
    await rejects(loadDataset(fifo), 'ERR_TARFLOW_INVALID_ARGUMENT', /pipe: not a regular file but a FIFO, which is never read as the dataset file .*; pass a file/);
    const x = join(dir, 'fifo-x.npy');
    writeFileSync(x, serializeNpy(new Uint8Array(2 * 16), [2, 4, 4]));
    await rejects(loadDataset(x, 'train', { labels: fifo }), 'ERR_TARFLOW_INVALID_ARGUMENT', /pipe: not a regular file but a FIFO, which is never read as the labels file/);
  } finally {
    clearTimeout(unblock);
  }
  // /dev/null would read as an empty file, /dev/zero and /dev/urandom forever
  await rejects(loadDataset('/dev/null'), 'ERR_TARFLOW_INVALID_ARGUMENT', /\/dev\/null: not a regular file but a device/);
  const link = join(dir, 'zero.npy');
  symlinkSync('/dev/zero', link);
  await rejects(loadDataset(link), 'ERR_TARFLOW_INVALID_ARGUMENT', /zero\.npy: not a regular file but a device, which is never read as the npy file/);
});

// ---------------------------------------------------------------------------------------------------------
// CIFAR-10 and IDX

/** A CIFAR-10 batch whose record k has label labels[k] and planes R = first + k, G = 100 + first + k, B = 200 + k. */
function cifarBatch(labels: number[], first: number): Uint8Array {
  const rec = 3073;
  const b = new Uint8Array(labels.length * rec);
  labels.forEach((label, k) => {
    b[k * rec] = label;
    b.fill(first + k, k * rec + 1, k * rec + 1 + 1024);
    b.fill(100 + first + k, k * rec + 1 + 1024, k * rec + 1 + 2048);
    b.fill(200 + k, k * rec + 1 + 2048, (k + 1) * rec);
  });
  return b;
}

test('CIFAR-10: a folder of batches by split (training batches in numeric order), or a single batch file', async () => {
  const cifar = folder('cifar-10-batches-bin');
  writeFileSync(join(cifar, 'data_batch_2.bin'), cifarBatch([9, 0], 3));
  writeFileSync(join(cifar, 'data_batch_1.bin'), cifarBatch([3, 1, 4], 0));
  writeFileSync(join(cifar, 'test_batch.bin'), cifarBatch([5], 50));
  writeFileSync(join(cifar, 'batches.meta.txt'), CIFAR10_CLASSES.join('\n'));
  const train = await loadDataset(cifar, 'train');
  assert.is(train.count, 5);
  assert.equal([train.channels, train.size], [3, 32]);
  assert.equal(Array.from(train.labels!), [3, 1, 4, 9, 0]);
  assert.equal(train.classNames, [...CIFAR10_CLASSES]);
  assert.is(train.numClasses, 10);
  for (let k = 0; k < 5; k++) assert.equal([px(train, k, 0, 5, 7), px(train, k, 1, 31, 0), px(train, k, 2, 0, 31)], [k, 100 + k, 200 + (k < 3 ? k : k - 3)]);
  const testSplit = await loadDataset(cifar, 'test');
  assert.equal([testSplit.count, testSplit.labels![0], px(testSplit, 0, 1, 0, 0)], [1, 5, 150]);
  const one = await loadDataset(join(cifar, 'data_batch_2.bin'));
  assert.equal(Array.from(one.labels!), [9, 0]);
});

test('CIFAR-10 rejections: truncated record, bad label, missing split, label base', async () => {
  const trunc = join(dir, 'data_batch_7.bin');
  writeFileSync(trunc, cifarBatch([1, 2], 0).subarray(0, 3073 + 1000));
  await rejects(loadDataset(trunc), 'ERR_TARFLOW_FILE_FORMAT', /data_batch_7\.bin: 4073 bytes is not a whole number of 3073-byte CIFAR-10 records.*cut short after 1000 bytes/);
  const bad = join(dir, 'bad_label.bin');
  writeFileSync(bad, cifarBatch([1, 10], 0));
  await rejects(loadDataset(bad), 'ERR_TARFLOW_DATA', /bad_label\.bin: record 1 has label 10, but CIFAR-10 labels are 0\.\.9/);
  const onlyTrain = folder('cifar-train-only');
  writeFileSync(join(onlyTrain, 'data_batch_1.bin'), cifarBatch([1], 0));
  await rejects(loadDataset(onlyTrain, 'test'), 'ERR_TARFLOW_DATA', /none of the test split \(test_batch\.bin\)/);
  await rejects(loadDataset(onlyTrain, 'train', { labelBase: 1 }), 'ERR_TARFLOW_INVALID_ARGUMENT', /labelBase 1 applies to \.npy\/\.npz labels only/);
});

test('CIFAR-10: batches that together hold more than one buffer can are refused before any is read', async () => {
  // Sparse files: 3 x 1.5 GB of records (each file under the 2 GB a read takes) that no buffer could hold together.
  const big = folder('cifar-too-big');
  for (let k = 1; k <= 3; k++) {
    const f = join(big, `data_batch_${k}.bin`);
    closeSync(openSync(f, 'w'));
    truncateSync(f, 3073 * 500_000);
  }
  const before = process.memoryUsage().rss;
  await rejects(loadDataset(big), 'ERR_TARFLOW_DATA', /cifar-too-big: 3 batch files hold 1500000 images of 3 x 32 x 32, 4\.3 GiB, more than one buffer can hold \(4 GiB\)/);
  assert.ok(process.memoryUsage().rss - before < 256 << 20, 'the batches were read before the refusal');
});

function idx(dims: number[], data: Uint8Array, type = 0x08): Uint8Array {
  const head = Buffer.alloc(4 + 4 * dims.length);
  head[2] = type;
  head[3] = dims.length;
  dims.forEach((d, i) => head.writeUInt32BE(d, 4 + 4 * i));
  return Buffer.concat([head, data]);
}

test('IDX: an image file takes its labels from the sibling label file when there is one', async () => {
  const d = folder('idx');
  const pixels = Uint8Array.from({ length: 3 * 25 }, (_, i) => i);
  writeFileSync(join(d, 'train-images-idx3-ubyte'), idx([3, 5, 5], pixels));
  writeFileSync(join(d, 'train-labels-idx1-ubyte'), idx([3], Uint8Array.from([2, 0, 1])));
  const ds = await loadDataset(join(d, 'train-images-idx3-ubyte'));
  assert.equal([ds.count, ds.channels, ds.size], [3, 1, 5]);
  assert.equal(Array.from(ds.images), Array.from(pixels));
  assert.equal(Array.from(ds.labels!), [2, 0, 1]);
  writeFileSync(join(d, 'unlabelled-images-idx3-ubyte'), idx([3, 5, 5], pixels));
  assert.is((await loadDataset(join(d, 'unlabelled-images-idx3-ubyte'))).labels, null);
  writeFileSync(join(d, 'short-images-idx3-ubyte'), idx([3, 5, 5], pixels));
  writeFileSync(join(d, 'short-labels-idx1-ubyte'), idx([2], Uint8Array.from([0, 1])));
  await rejects(loadDataset(join(d, 'short-images-idx3-ubyte')), 'ERR_TARFLOW_DATA', /short-labels-idx1-ubyte: labels have dims \[2\] but .* holds 3 images/);
  await rejects(loadDataset(join(d, 'train-labels-idx1-ubyte')), 'ERR_TARFLOW_DATA', /is an IDX label file; pass the image file/);
  writeFileSync(join(d, 'cut-images-idx3-ubyte'), idx([3, 5, 5], pixels).subarray(0, 50));
  await rejects(loadDataset(join(d, 'cut-images-idx3-ubyte')), 'ERR_TARFLOW_FILE_FORMAT', /cut-images-idx3-ubyte: .*the file is truncated/);
});

test('IDX files of any header reach the IDX reader: 4 dims are read as arrays are, other element types get its message', async () => {
  const d = folder('idx-kinds');
  writeFileSync(join(d, 'rgb-idx4-ubyte'), idx([N, S, S, C], toHwc(chw, N, C, S)));
  const rgb = await loadDataset(join(d, 'rgb-idx4-ubyte'));
  assert.equal([rgb.count, rgb.channels, rgb.size], [N, C, S]);
  assert.equal(Array.from(rgb.images), Array.from(chw));
  writeFileSync(join(d, 'float-images-idx3-ubyte'), idx([1, 2, 2], new Uint8Array(16), 0x0d));
  await rejects(loadDataset(join(d, 'float-images-idx3-ubyte')), 'ERR_TARFLOW_DTYPE',
    /float-images-idx3-ubyte: IDX element type 0x0d \(float32\) is not supported; .*convert the data to \.npy/);
});

test('a labels file of the other format is named as such, with the way out', async () => {
  const d = folder('idx-npy');
  writeFileSync(join(d, 'train-images-idx3-ubyte'), idx([2, 4, 4], chw.subarray(0, 32)));
  writeFileSync(join(d, 'train-labels-idx1-ubyte'), idx([2], Uint8Array.from([1, 0])));
  const npyLabels = join(d, 'labels0.npy');
  writeFileSync(npyLabels, serializeNpy(BigInt64Array.from([1n, 0n]), [2]));
  await rejects(loadDataset(join(d, 'train-images-idx3-ubyte'), 'train', { labels: npyLabels }), 'ERR_TARFLOW_DATA',
    /labels0\.npy: is a \.npy\/\.npz file, but IDX images \(.*train-images-idx3-ubyte\) take their labels from an IDX label file; give the matching …-labels-idx1-ubyte file \(--labels\), or convert the images to \.npy/);
  const x = join(d, 'x.npy');
  writeFileSync(x, serializeNpy(chw.subarray(0, 32), [2, 4, 4]));
  await rejects(loadDataset(x, 'train', { labels: join(d, 'train-labels-idx1-ubyte') }), 'ERR_TARFLOW_DATA',
    /train-labels-idx1-ubyte: is an IDX label file, but \.npy\/\.npz images take their labels from a \.npy file; convert it with np\.save\('labels\.npy', np\.fromfile\('train-labels-idx1-ubyte', np\.uint8, offset=8\)\)/);
  assert.equal(Array.from((await loadDataset(join(d, 'train-images-idx3-ubyte'), 'train', { labels: join(d, 'train-labels-idx1-ubyte') })).labels!), [1, 0]);
  assert.equal(Array.from((await loadDataset(x, 'train', { labels: npyLabels })).labels!), [1, 0]);
});

test('labels of a dtype that is refused are told to become integers, images still to become numbers', async () => {
  const x = join(dir, 'dtype-x.npy');
  writeFileSync(x, serializeNpy(new Uint8Array(2 * 16), [2, 4, 4]));
  // a <U1 labels file, made from an int32 one: both have 4-byte items, so only the descr differs
  const strings = (bytes: Uint8Array) => {
    const b = Buffer.from(bytes);
    const at = b.indexOf("'<i4'");
    b.write("'<U1'", at, 'latin1');
    return b;
  };
  const y = join(dir, 'dtype-y.npy');
  writeFileSync(y, strings(serializeNpy(Int32Array.from([0, 1]), [2])));
  await rejects(loadDataset(x, 'train', { labels: y }), 'ERR_TARFLOW_DTYPE',
    /dtype-y\.npy: dtype '<U1' is not supported; labels must be integers: turn class names \(strings or objects\) into indices with np\.unique\(y, return_inverse=True\)\[1\]\.astype\('<i8'\)/);
  // inside an .npz, the label members are known by name before they are parsed
  const zip = Buffer.from(serializeNpz({ labels: { data: Int32Array.from([0, 1]), shape: [2] } }));
  const body = 30 + zip.readUInt16LE(26);
  const member = strings(zip.subarray(body, body + zip.readUInt32LE(18)));
  member.copy(zip, body);
  const crc = crc32(member);
  zip.writeUInt32LE(crc, 14);
  zip.writeUInt32LE(crc, zip.indexOf(Buffer.from([0x50, 0x4b, 0x01, 0x02])) + 16);
  const bad = join(dir, 'dtype-labels.npz');
  writeFileSync(bad, zip);
  let err: Error | undefined;
  await loadDataset(bad).catch((e: Error) => { err = e; });
  assert.match(err?.message ?? '', /dtype-labels\.npz:labels\.npy: dtype '<U1' is not supported; labels must be integers/);
  assert.not.match(err!.message, /astype\('<f4'\)/);
  // an images file keeps the advice for data
  writeFileSync(y, strings(serializeNpy(Int32Array.from([0, 1]), [2])));
  await rejects(loadDataset(y), 'ERR_TARFLOW_DTYPE', /dtype '<U1' is not supported; supported are .*astype\('<f4'\)/);
});

// ---------------------------------------------------------------------------------------------------------
// through the command line: the model's shape reaches the folder decoder

test('tarflow train and eval on an image folder decode at --image-size/--channels and the model\'s shape', () => {
  const cli = join(repoRoot, 'dist', 'lib', 'cli.js');
  const out = join(dir, 'run');
  const run = (args: string[]) => spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', env: { ...process.env, TARFLOW_QUIET: '1' }, timeout: 60_000 });
  const t = run(['train', '--dataset', classRoot, '--image-size', '8', '--channels', '1', '--steps', '2', '--batch-size', '4', '--out', out, '--eval-images', '0', '--json', '--device', 'cpu']);
  assert.is(t.status, 0, t.stderr);
  assert.is(JSON.parse(t.stdout).steps, 2);
  assert.match(t.stderr, /decoding 4 images/);
  const e = run(['eval', '--checkpoint', join(out, 'checkpoint.safetensors'), '--dataset', classRoot, '--json', '--device', 'cpu']);
  assert.is(e.status, 0, e.stderr);
  assert.is(JSON.parse(e.stdout).images, 4);
  const bad = run(['train', '--dataset', npzPathForCli(), '--image-size', '8', '--steps', '1', '--out', join(dir, 'run2'), '--device', 'cpu']);
  assert.is(bad.status, 1);
  assert.match(bad.stderr, /holds 3 x 4 x 4 images, not the 3 x 8 x 8 asked for/);
});

function npzPathForCli(): string {
  return npz('cli.npz', { images: { data: chw, shape: [N, C, S, S] } });
}

test.run();
