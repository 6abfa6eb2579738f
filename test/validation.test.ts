/**
 * Argument checking at every public entry point: bad shapes, dtypes, label ranges, batch sizes and option values
 * are refused with a TarflowError whose message reads "<argument>: expected <what>, got <what came>", before any
 * native work (no tensor allocated, no op called).
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { getBackend } from '../lib/backend.js';
import { fromReferenceConfig, validateConfig, toReferenceConfig, type TarFlowConfig } from '../lib/config.js';
import { loadModel, loadStateDict, saveModel, stateDict } from '../lib/checkpoint.js';
import { commandSpec, parseFlags } from '../lib/cli.js';
import { loadCifarDataset, loadDataset, loadIdxDataset, loadImageFolderDataset, loadMnist, makeDataset } from '../lib/data.js';
import { TarflowError, type TarflowErrorCode } from '../lib/errors.js';
import { evaluateBpd, scoreImages } from '../lib/evaluate.js';
import { evalSamples, evaluate, generateToDisk, sample, score, train } from '../lib/jobs.js';
import { TarFlow } from '../lib/model.js';
import { checkMnistConditional, evaluateSamples, knnClassify } from '../lib/sample-quality.js';
import { defaultTemperature, LIKELIHOOD_TEMPERATURE } from '../lib/sampling.js';
import { denoise, generate, resolveLabels } from '../lib/sampling.js';
import { readConfigFile } from '../lib/tasks.js';
import { Trainer, checkTrainOptionRelations, resolveTrainOptions } from '../lib/train.js';
import { describeValue } from '../lib/validate.js';

const INVALID = 'ERR_TARFLOW_INVALID_ARGUMENT';
const SHAPE = 'ERR_TARFLOW_SHAPE';
const DTYPE = 'ERR_TARFLOW_DTYPE';
const CONFIG = 'ERR_TARFLOW_CONFIG';

/** What a refusal must say: the argument, (part of) the expectation and the rendered value that came. */
interface Refusal {
  code: TarflowErrorCode;
  name: string;
  expected: string;
  got: string;
}

function checkRefusal(caught: unknown, want: Refusal): TarflowError {
  if (!(caught instanceof TarflowError)) {
    assert.unreachable(`expected a TarflowError ${want.code} naming ${want.name}, got ${caught === undefined ? 'no error' : String(caught)}`);
  }
  const err = caught as TarflowError;
  assert.is(err.code, want.code, `wrong code; message: ${err.message}`);
  assert.ok(err.message.startsWith(`${want.name}: expected `), `names '${want.name}': ${err.message}`);
  assert.ok(err.message.includes(want.expected), `says what was expected (${want.expected}): ${err.message}`);
  assert.ok(err.message.includes(`, got ${want.got}`), `says what came (${want.got}): ${err.message}`);
  return err;
}

function refuses(fn: () => unknown, code: TarflowErrorCode, name: string, expected: string, got: string): TarflowError {
  let caught: unknown;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  return checkRefusal(caught, { code, name, expected, got });
}

async function rejects(fn: () => Promise<unknown>, code: TarflowErrorCode, name: string, expected: string, got: string): Promise<TarflowError> {
  let caught: unknown;
  try {
    await fn();
  } catch (err) {
    caught = err;
  }
  return checkRefusal(caught, { code, name, expected, got });
}

/**
 * Counts the native work `fn` starts on `model`'s backend (tensors created, ops called) by swapping counting
 * proxies into the backend for the call.
 */
function nativeWork(model: TarFlow, fn: () => unknown): number {
  const backend = model.backend as unknown as { Tensor: object; ops: object };
  const { Tensor, ops } = backend;
  let calls = 0;
  backend.Tensor = new Proxy(Tensor, { construct: (t, args, nt) => (calls++, Reflect.construct(t as never, args, nt)) });
  backend.ops = new Proxy(ops, {
    get: (t, key) => {
      const v = Reflect.get(t, key) as unknown;
      return typeof v === 'function' ? (...args: unknown[]) => (calls++, v.apply(t, args)) : v;
    },
  });
  try {
    fn();
  } catch {
    // the refusal itself is checked by the caller
  } finally {
    backend.Tensor = Tensor;
    backend.ops = ops;
  }
  return calls;
}

/** The refusal, and that nothing native happened before it. */
function refusesFirst(model: TarFlow, fn: () => unknown, code: TarflowErrorCode, name: string, expected: string, got: string): void {
  refuses(fn, code, name, expected, got);
  assert.is(nativeWork(model, fn), 0, `${name}: refused only after native work`);
}

const base: Partial<TarFlowConfig> = { inChannels: 1, imgSize: 8, patchSize: 4, channels: 64, numBlocks: 2, layersPerBlock: 1 };
const cond = new TarFlow({ ...base, numClasses: 3 }, { device: 'cpu', seed: 1 });
const uncond = new TarFlow(base, { device: 'cpu', seed: 1 });
const PER = 64;
const dir = mkdtempSync(join(tmpdir(), 'tarflow-validation-'));

test.after(() => {
  cond.dispose();
  uncond.dispose();
  rmSync(dir, { recursive: true, force: true });
});

test('describeValue renders any value briefly and never throws', () => {
  assert.is(describeValue('x'.repeat(10_000)), `"${'x'.repeat(60)}"... (10000 characters)`);
  assert.is(describeValue(NaN), 'NaN');
  assert.is(describeValue(-Infinity), '-Infinity');
  assert.is(describeValue(-0), '-0');
  assert.is(describeValue(12n), '12n');
  assert.is(describeValue(undefined), 'undefined');
  assert.is(describeValue(null), 'null');
  assert.is(describeValue(Symbol('s')), 'a symbol');
  assert.is(describeValue(() => 1), 'a function');
  assert.is(describeValue(new Float64Array(5)), 'a Float64Array of 5 values');
  assert.is(describeValue('a\nb"\u0000'), '"a\\nb\\"\\u0000"');
  assert.is(describeValue([1, 'two', [3, [4]], { a: 1 }, 5, 6]), '[1, "two", [3, [...]], {a: 1}, ... (6 items)]');
  assert.is(describeValue(JSON.parse('{"__proto__": {"x": 1}, "a b": 2}')), '{__proto__: {x: 1}, "a b": 2}');
  const cyclic: Record<string, unknown> = {};
  cyclic.self = cyclic;
  assert.is(describeValue(cyclic), '{self: {self: {...}}}');
  const hostile = new Proxy({}, { ownKeys: () => { throw new Error('boom'); } });
  assert.is(describeValue(hostile), 'an unreadable value');
  assert.is(describeValue({ get x() { throw new Error('boom'); } }), 'an unreadable value');
  assert.ok(describeValue(Array.from({ length: 1e6 }, (_, i) => 'y'.repeat(i % 100))).length < 400);
});

test('configs: every field is named as written, with what it must be and what it was', () => {
  for (const [field, value, got] of [
    ['inChannels', '1', '"1"'], ['imgSize', 8.5, '8.5'], ['patchSize', 0, '0'], ['channels', NaN, 'NaN'],
    ['numBlocks', -2, '-2'], ['layersPerBlock', 1e300, '1e+300'], ['headDim', null, 'null'], ['expansion', 2n, '2n'],
  ] as const) {
    refuses(() => validateConfig({ ...base, [field]: value }), CONFIG, `config.${field}`, 'a positive integer', got);
  }
  refuses(() => validateConfig({ ...base, nvp: 'yes' as never }), CONFIG, 'config.nvp', 'true or false', '"yes"');
  refuses(() => validateConfig({ ...base, numClasses: -1 }), CONFIG, 'config.numClasses', 'an integer in [0, 100000]', '-1');
  refuses(() => validateConfig({ ...base, numclasses: 10 } as never), CONFIG, 'config', "only the options 'inChannels'", 'the unknown option "numclasses"');
  assert.throws(() => validateConfig({ ...base, numclasses: 10 } as never), /did you mean 'numClasses'\?/);
  refuses(() => validateConfig(null as never), CONFIG, 'config', 'an object', 'null');
  refuses(() => validateConfig([] as never), CONFIG, 'config', 'an object', '[]');
  refuses(() => validateConfig({ ...base, numBlocks: 5000 }), CONFIG, 'config.numBlocks', 'at most 4096', '5000');
  refuses(() => validateConfig({ ...base, numBlocks: 64, layersPerBlock: 65 }), CONFIG, 'config.layersPerBlock', 'at most 64 with 64 blocks', '65');
  refuses(() => validateConfig({ ...base, channels: 2 ** 22 }), CONFIG, 'config', 'at most 2^40 parameters', '4.22e+14 parameters');
  // the reference's snake_case names are the ones a config file or checkpoint metadata uses
  const ref = toReferenceConfig(validateConfig(base));
  refuses(() => fromReferenceConfig({ ...ref, patch_size: 3 }), CONFIG, 'config.patch_size', 'a divisor of config.img_size (8)', '3');
  refuses(() => fromReferenceConfig({ ...ref, head_dim: 48 }), CONFIG, 'config.channels', 'a multiple of config.head_dim (48)', '64');
  refuses(() => fromReferenceConfig({ ...ref, patch_size: 8 }), CONFIG, 'config.patch_size', 'less than config.img_size (8)', '8; the image must have at least 2 patches');
  refuses(() => fromReferenceConfig({ ...ref, numClasses: 3 }), CONFIG, 'config', 'only the fields in_channels', 'the field "numClasses"');
  refuses(() => fromReferenceConfig({ ...base, num_classes: 3 }), CONFIG, 'config', 'only the fields inChannels', 'the field "num_classes"');
  refuses(() => fromReferenceConfig(JSON.parse(`{"__proto__": {"in_channels": 1}, ${JSON.stringify(ref).slice(1)}`)), CONFIG, 'config', 'only the fields', 'the field "__proto__"');
  refuses(() => fromReferenceConfig('{}'), CONFIG, 'config', 'an object', '"{}"');
});

test('config files: unreadable, not JSON, not an object or not a model config', async () => {
  const write = (name: string, text: string) => {
    const p = join(dir, name);
    writeFileSync(p, text);
    return p;
  };
  const missing = join(dir, 'none.json');
  await rejects(() => readConfigFile(missing), CONFIG, `config file ${missing}`, 'a readable file', 'ENOENT');
  // a device would be read for ever
  if (existsSync('/dev/zero')) await rejects(() => readConfigFile('/dev/zero'), CONFIG, 'config file /dev/zero', 'a readable file', '/dev/zero: not a regular file but a device');
  const truncated = write('truncated.json', '{"in_channels": 1, "img_');
  await rejects(() => readConfigFile(truncated), CONFIG, `config file ${truncated}`, 'JSON', 'invalid JSON (');
  const list = write('list.json', '[1, 2]');
  await rejects(() => readConfigFile(list), CONFIG, `config file ${list}`, 'an object', '[1, 2]');
  const ref = toReferenceConfig(validateConfig(base));
  const bad = write('bad.json', JSON.stringify({ ...ref, channels: '64' }));
  await rejects(() => readConfigFile(bad), CONFIG, 'config.channels', 'a positive integer', '"64"');
  const good = write('good.json', JSON.stringify(ref));
  assert.equal(await readConfigFile(good), ref);
});

test('models: construction options, workspace batch sizes, device', () => {
  refuses(() => new TarFlow(base, { device: 'cpu', dtype: 'bfloat16' as never }), INVALID, 'dtype', "one of 'float32', 'float64'", '"bfloat16"');
  refuses(() => new TarFlow(base, { device: 'cpu', seed: -1 }), INVALID, 'seed', 'an integer >= 0', '-1');
  refuses(() => new TarFlow(base, { device: 'cpu', noInit: 1 as never }), INVALID, 'noInit', 'true or false', '1');
  refuses(() => new TarFlow(base, null as never), INVALID, 'options', 'an object', 'null');
  refuses(() => new TarFlow(base, { device: 'gpu' as never }), INVALID, 'device', "one of 'auto', 'cpu', 'cuda'", '"gpu"');
  refuses(() => getBackend('' as never), INVALID, 'device', "one of 'auto', 'cpu', 'cuda'", '""');
  for (const [batch, got] of [[0, '0'], [2.5, '2.5'], [NaN, 'NaN'], [-3, '-3']] as const) {
    refusesFirst(cond, () => cond.workspace(batch), INVALID, 'batch', 'a positive integer', got);
  }
});

test('model inputs: image shapes and dtypes, label counts, dtypes and ranges', () => {
  const ws = cond.workspace(2);
  const images = new Float32Array(2 * PER);
  refuses(() => cond.setInputs(ws, new Float32Array(2 * PER - 1)), SHAPE, 'images', '2 x 1 x 8 x 8 = 128 values (pixels scaled to [-1, 1])', '127');
  refuses(() => cond.setInputs(ws, Array.from(images) as never), DTYPE, 'images', 'a Float32Array or a Float64Array', '[0, 0, 0, 0, ... (128 items)]');
  refuses(() => cond.setInputs(ws, images, Int32Array.of(1)), SHAPE, 'labels', '2 labels (one per image)', '1');
  refuses(() => cond.setInputs(ws, images, [0, 1] as never), DTYPE, 'labels', 'an Int32Array', '[0, 1]');
  refuses(() => cond.setInputs(ws, images, Int32Array.of(0, 3)), INVALID, 'labels[1]', 'a class index in 0..2 (the model has 3 classes) or -1 for none', '3');
  refuses(() => cond.setLabels(ws, Int32Array.of(-2, 0)), INVALID, 'labels[0]', 'a class index in 0..2', '-2');
  images[PER + 5] = Infinity;
  const err = refuses(() => cond.setInputs(ws, images), 'ERR_TARFLOW_DATA', `images[${PER + 5}]`, 'a finite value (pixels scaled to [-1, 1])', 'Infinity');
  assert.match(err.message, /value 5 of image 1$/);
});

test('guidance options are checked before the inverse starts', () => {
  const z = new cond.backend.Tensor('float32', [1, 4, 16]);
  const out = new cond.backend.Tensor('float32', [1, 1, 8, 8]);
  try {
    for (const [options, name, expected, got] of [
      [{ guidance: -0.5 }, 'guidance', 'a finite number >= 0', '-0.5'],
      [{ guidance: Infinity }, 'guidance', 'a finite number >= 0', 'Infinity'],
      [{ guideWhat: 'c' }, 'guideWhat', "one of 'ab', 'a', 'b'", '"c"'],
      [{ attnTemp: 0 }, 'attnTemp', 'a positive finite number', '0'],
      [{ annealed: 'yes' }, 'annealed', 'true or false', '"yes"'],
      [{ kvCache: 'fp16' }, 'kvCache', "one of 'fp32', 'bf16'", '"fp16"'],
      // These shape the guided term only: without guidance they would change nothing.
      [{ guideWhat: 'b' }, 'guideWhat', 'guidance above 0 for it to act', '"b" with guidance 0'],
      [{ guidance: 0, attnTemp: 0.5 }, 'attnTemp', 'guidance above 0 for it to act', '0.5 with guidance 0'],
      [{ annealed: true }, 'annealed', 'guidance above 0 for it to act', 'true with guidance 0'],
    ] as const) {
      refusesFirst(cond, () => cond.reverse(z, out, null, options as never), INVALID, name, expected, got);
    }
  } finally {
    z.dispose();
    out.dispose();
  }
  const m64 = new TarFlow(base, { device: 'cpu', dtype: 'float64', seed: 1 });
  const z64 = new m64.backend.Tensor('float64', [1, 4, 16]);
  const out64 = new m64.backend.Tensor('float64', [1, 1, 8, 8]);
  try {
    refusesFirst(m64, () => m64.reverse(z64, out64, null, { kvCache: 'bf16' }), INVALID, 'kvCache', "'fp32' with dtype 'float64'", "'bf16'");
  } finally {
    z64.dispose();
    out64.dispose();
    m64.dispose();
  }
});

test('generate: every option is refused before any tensor is made', () => {
  const ok = { count: 3 };
  for (const [options, code, name, expected, got] of [
    [{ count: 0 }, INVALID, 'count', 'an integer in [1, ', '0'],
    [{ count: 2.5 }, INVALID, 'count', 'an integer in [1, ', '2.5'],
    [{ count: '3' }, INVALID, 'count', 'an integer in [1, ', '"3"'],
    [{ count: 2 ** 40 }, INVALID, 'count', `an integer in [1, ${Math.floor(2 ** 32 / PER)}]`, '1099511627776'],
    [{ ...ok, seed: -1 }, INVALID, 'seed', 'an integer >= 0', '-1'],
    [{ ...ok, seed: 2 ** 60 }, INVALID, 'seed', '(at most 2^53 - 1)', '1152921504606847000'],
    [{ ...ok, startIndex: 0.5 }, INVALID, 'startIndex', `an integer in [0, ${Math.floor(2 ** 53 / PER) - 3}]`, '0.5'],
    [{ ...ok, batchSize: 0 }, INVALID, 'batchSize', 'a positive integer', '0'],
    [{ ...ok, maxRedraws: -1 }, INVALID, 'maxRedraws', 'an integer in [0, 968]', '-1'],
    // redraw r draws from latent stream 31 + r; from 1000 the streams are initialisation's (lib/streams.ts)
    [{ ...ok, maxRedraws: 969 }, INVALID, 'maxRedraws', 'an integer in [0, 968]', '969'],
    [{ ...ok, temperature: -0.5 }, INVALID, 'temperature', 'a finite number >= 0', '-0.5'],
    [{ ...ok, temperature: Infinity }, INVALID, 'temperature', 'a finite number >= 0', 'Infinity'],
    [{ ...ok, denoiseSigma: NaN }, INVALID, 'denoiseSigma', 'a finite number >= 0', 'NaN'],
    [{ ...ok, guidance: -1 }, INVALID, 'guidance', 'a finite number >= 0', '-1'],
    [{ ...ok, guideWhat: 'ba' }, INVALID, 'guideWhat', "one of 'ab', 'a', 'b'", '"ba"'],
    [{ ...ok, labels: 3 }, INVALID, 'labels[0]', 'a class index in 0..2 (the model has 3 classes) or -1 for none', '3'],
    [{ ...ok, labels: [0, 1.5, 2] }, INVALID, 'labels[1]', 'a class index in 0..2', '1.5'],
    [{ ...ok, labels: [0, 1] }, SHAPE, 'labels', '3 labels (one per image)', '2'],
    [{ ...ok, labels: Float64Array.of(0, 1, 2) }, DTYPE, 'labels', 'a class index, an array of them or an Int32Array', 'a Float64Array of 3 values'],
    [{ ...ok, labels: '0,1,2' }, DTYPE, 'labels', 'a class index, an array of them or an Int32Array', '"0,1,2"'],
  ] as const) {
    refusesFirst(cond, () => generate(cond, options as never), code, name, expected, got);
  }
  refusesFirst(cond, () => generate(cond, undefined as never), INVALID, 'options', 'an object', 'undefined');
  refusesFirst(uncond, () => generate(uncond, { count: 2, labels: [0, 1] }), INVALID, 'labels', 'none, or -1 (the model is unconditional)', '[0, 1]');
  refuses(() => resolveLabels(cond, 2, 7), INVALID, 'labels[0]', 'a class index in 0..2', '7');
  assert.equal(Array.from(resolveLabels(cond, 4, undefined, 2)!), [2, 0, 1, 2]);
  assert.equal(Array.from(resolveLabels(cond, 2, -1)!), [-1, -1]);
});

test('denoise: images, labels and step options', () => {
  const x = new Float32Array(2 * PER);
  const sigma = { sigma: 0.1 };
  refusesFirst(cond, () => denoise(cond, new Float64Array(2 * PER) as never, null, sigma), DTYPE, 'images', 'a Float32Array', 'a Float64Array of 128 values');
  refusesFirst(cond, () => denoise(cond, new Float32Array(PER + 1), null, sigma), SHAPE, 'images', 'a whole, non-zero number of 1 x 8 x 8 images', '65 values');
  refusesFirst(cond, () => denoise(cond, new Float32Array(0), null, sigma), SHAPE, 'images', 'a multiple of 64 values', '0 values');
  refusesFirst(cond, () => denoise(cond, x, Int32Array.of(0, 5), sigma), INVALID, 'labels[1]', 'a class index in 0..2', '5');
  refusesFirst(cond, () => denoise(cond, x, Int32Array.of(0), sigma), SHAPE, 'labels', '2 labels (one per image)', '1');
  refusesFirst(cond, () => denoise(cond, x, null, { sigma: -0.1 }), INVALID, 'sigma', 'a finite number >= 0', '-0.1');
  refusesFirst(cond, () => denoise(cond, x, null, {} as never), INVALID, 'sigma', 'a finite number >= 0', 'undefined');
  refusesFirst(cond, () => denoise(cond, x, null, { sigma: 0.1, lambda: Infinity }), INVALID, 'lambda', 'a finite number', 'Infinity');
});

test('scoring: uint8 images, labels, batch size and seed; dataset limits', () => {
  const bytes = new Uint8Array(3 * PER);
  refusesFirst(cond, () => scoreImages(cond, new Float32Array(3 * PER) as never, null), DTYPE, 'images', 'a Uint8Array', 'a Float32Array of 192 values');
  refusesFirst(cond, () => scoreImages(cond, new Uint8Array(100), null), SHAPE, 'images', '1 x 8 x 8 uint8 images (a multiple of 64 values)', '100 values');
  refusesFirst(cond, () => scoreImages(cond, bytes, Int32Array.of(0, 1)), SHAPE, 'labels', '3 labels (one per image)', '2');
  refusesFirst(cond, () => scoreImages(cond, bytes, Int32Array.of(0, 1, 9)), INVALID, 'labels[2]', 'a class index in 0..2', '9');
  refusesFirst(cond, () => scoreImages(cond, bytes, null, { batchSize: 0 }), INVALID, 'batchSize', 'a positive integer', '0');
  refusesFirst(cond, () => scoreImages(cond, bytes, null, { seed: 1.5 }), INVALID, 'seed', 'an integer >= 0', '1.5');
  const data = makeDataset('toy', bytes, 3, 1, 8, Int32Array.of(0, 1, 2));
  refusesFirst(cond, () => evaluateBpd(cond, data, { limit: 0 }), INVALID, 'limit', 'a positive integer', '0');
  refusesFirst(cond, () => evaluateBpd(cond, data, { batchSize: -1 }), INVALID, 'batchSize', 'a positive integer', '-1');
});

test('training: options are refused before the trainer allocates', () => {
  const data = makeDataset('toy', new Uint8Array(32 * PER), 32, 1, 8, Int32Array.from({ length: 32 }, (_, i) => i % 3));
  for (const [options, name, expected, got] of [
    [{ batchSize: 0 }, 'batchSize', 'a positive integer', '0'],
    [{ batchSize: 33 }, 'batchSize', 'at most the dataset size (32 images)', '33; use a smaller batch'],
    [{ epochs: Infinity }, 'epochs', 'a positive finite number', 'Infinity'],
    [{ steps: 1.5 }, 'steps', 'a positive integer', '1.5'],
    [{ lr: 0 }, 'lr', 'a positive finite number', '0'],
    [{ minLr: -1e-6 }, 'minLr', 'a finite number >= 0', '-0.000001'],
    [{ warmupSteps: -1 }, 'warmupSteps', 'an integer >= 0', '-1'],
    [{ beta1: 1 }, 'beta1', 'a finite number in [0, 1)', '1'],
    [{ beta2: '0.9' }, 'beta2', 'a finite number in [0, 1)', '"0.9"'],
    [{ eps: 0 }, 'eps', 'a positive finite number', '0'],
    [{ weightDecay: NaN }, 'weightDecay', 'a finite number >= 0', 'NaN'],
    [{ noise: 'salt' }, 'noise', "one of 'gaussian', 'uniform'", '"salt"'],
    [{ sigma: -1 }, 'sigma', 'a finite number >= 0', '-1'],
    [{ labelDrop: 1.5 }, 'labelDrop', 'a finite number in [0, 1]', '1.5'],
    [{ hflip: 1 }, 'hflip', 'true or false', '1'],
    [{ clipGradNorm: 0 }, 'clipGradNorm', 'a positive finite number', '0'],
    [{ maxNonFiniteSteps: 0 }, 'maxNonFiniteSteps', 'a positive integer', '0'],
    [{ seed: 2 ** 32 }, 'seed', 'an integer in [0, 4294967296)', '4294967296'],
  ] as const) {
    const o = { batchSize: 16, ...(options as object) } as never;
    refuses(() => resolveTrainOptions(o, 32), INVALID, name, expected, got);
    assert.is(nativeWork(cond, () => new Trainer(cond, data, o)), 0, `${name}: the trainer allocated before refusing`);
  }
  refuses(() => resolveTrainOptions(null as never, 32), INVALID, 'options', 'an object', 'null');
  assert.is(resolveTrainOptions({ batchSize: 16, clipGradNorm: null as never }, 32).clipGradNorm, null);
});

test('sample quality: kNN arguments and evaluateSamples options, before MNIST is read', async () => {
  const backend = getBackend('cpu');
  const ref = { images: new Uint8Array(4 * 16), labels: Int32Array.of(0, 1, 2, 3), count: 4, dim: 16 };
  refuses(() => knnClassify(backend, ref, new Uint8Array(16), 5), INVALID, 'k', 'an integer in [1, 4]', '5');
  refuses(() => knnClassify(backend, { ...ref, count: 5 }, new Uint8Array(16)), SHAPE, 'reference.images', '5 images of 16 pixels = 80 bytes', '64');
  refuses(() => knnClassify(backend, { ...ref, labels: Int32Array.of(0) }, new Uint8Array(16)), SHAPE, 'reference.labels', '4 labels (one per image)', '1');
  refuses(() => knnClassify(backend, { ...ref, labels: [0, 1, 2, 3] as never }, new Uint8Array(16)), DTYPE, 'reference.labels', 'an Int32Array', '[0, 1, 2, 3]');
  refuses(() => knnClassify(backend, ref, new Uint8Array(17)), SHAPE, 'queries', 'a whole number of 16-pixel images', '17 bytes');
  refuses(() => knnClassify(backend, ref, new Uint8Array(16), 1, { queryBlock: 0 }), INVALID, 'queryBlock', 'a positive integer', '0');
  const mnistShaped = new TarFlow({ inChannels: 1, imgSize: 28, patchSize: 7, channels: 64, numBlocks: 1, layersPerBlock: 1, numClasses: 10 }, { device: 'cpu' });
  try {
    for (const [options, name, expected, got] of [
      [{ count: 0 }, 'count', 'an integer in [1, ', '0'],
      [{ k: 0 }, 'k', 'a positive integer', '0'],
      [{ batchSize: 1.5 }, 'batchSize', 'a positive integer', '1.5'],
      [{ guidance: -2 }, 'guidance', 'a finite number >= 0', '-2'],
      [{ attnTemp: -1 }, 'attnTemp', 'a positive finite number', '-1'],
      [{ seed: -5 }, 'seed', 'an integer >= 0', '-5'],
      [{ temperature: -1 }, 'temperature', 'a finite number >= 0', '-1'],
    ] as const) {
      await rejects(() => evaluateSamples(mnistShaped, options), INVALID, name, expected, got);
    }
  } finally {
    mnistShaped.dispose();
  }
});

test('async jobs refuse bad specs before loading a checkpoint or dataset', async () => {
  const ckpt = join(dir, 'model.safetensors');
  await saveModel(ckpt, cond);
  const out = join(dir, 'out');
  const inline = { inline: true };
  await rejects(() => train(null as never), INVALID, 'spec', 'an object', 'null');
  await rejects(() => train({ out: '' }, inline), INVALID, 'out', 'a non-empty string', '""');
  // the dataset does not exist: each refusal below comes before it would be read
  const missingData = { dataset: join(dir, 'none.npy'), out };
  await rejects(() => train({ ...missingData, lr: -1 }, inline), INVALID, 'lr', 'a positive finite number', '-1');
  await rejects(() => train({ ...missingData, sampleGuidance: -1 }, inline), INVALID, 'sampleGuidance', 'a finite number >= 0', '-1');
  await rejects(() => train({ ...missingData, sampleTemperature: -1 }, inline), INVALID, 'sampleTemperature', 'a finite number >= 0', '-1');
  await rejects(() => train({ ...missingData, preset: 'huge' as never }, inline), INVALID, 'preset', "one of 'tiny', 'small'", '"huge"');
  await rejects(() => train({ ...missingData, checkpointEvery: 0 }, inline), INVALID, 'checkpointEvery', 'a positive integer', '0');
  await rejects(() => train({ ...missingData, config: { ...toReferenceConfig(cond.config), nvp: 1 } }, inline), CONFIG, 'config.nvp', 'true or false', '1');
  // the checkpoint does not exist either: a bad option is named first
  const missingCkpt = { checkpoint: join(dir, 'none.safetensors'), out: join(dir, 'grid.png') };
  await rejects(() => sample({ ...missingCkpt, count: 0 }, inline), INVALID, 'count', 'an integer in [1, ', '0');
  await rejects(() => sample({ ...missingCkpt, count: 2, cols: 0 }, inline), INVALID, 'cols', 'a positive integer', '0');
  await rejects(() => sample({ ...missingCkpt, count: 2, guideWhat: 'x' as never }, inline), INVALID, 'guideWhat', "one of 'ab', 'a', 'b'", '"x"');
  await rejects(() => sample({ ...missingCkpt, checkpoint: 7 as never, count: 2 }, inline), INVALID, 'checkpoint', 'a non-empty string', '7');
  await rejects(() => generateToDisk({ ...missingCkpt, count: 4, format: 'gif' as never }, inline), INVALID, 'format', "one of 'png', 'npz'", '"gif"');
  await rejects(() => generateToDisk({ ...missingCkpt, count: 4, shardSize: 0 }, inline), INVALID, 'shardSize', 'a positive integer', '0');
  await rejects(() => evaluate({ checkpoint: missingCkpt.checkpoint, split: 'val' as never }, inline), INVALID, 'split', "one of 'train', 'test'", '"val"');
  await rejects(() => evaluate({ checkpoint: missingCkpt.checkpoint, limit: -1 }, inline), INVALID, 'limit', 'a positive integer', '-1');
  await rejects(() => score({ checkpoint: missingCkpt.checkpoint, images: '' }, inline), INVALID, 'images', 'a non-empty string', '""');
  await rejects(() => score({ checkpoint: missingCkpt.checkpoint, images: 'x.npy', batchSize: 0 }, inline), INVALID, 'batchSize', 'a positive integer', '0');
  await rejects(() => evalSamples({ checkpoint: missingCkpt.checkpoint, k: 0 }, inline), INVALID, 'k', 'a positive integer', '0');
  await rejects(() => evalSamples({ checkpoint: missingCkpt.checkpoint, denoiseSigma: -1 }, inline), INVALID, 'denoiseSigma', 'a finite number >= 0', '-1');
  await rejects(() => loadModel(ckpt, { device: 'cpu', config: { ...toReferenceConfig(cond.config), img_size: 9 } }), CONFIG, 'config.patch_size', 'a divisor of config.img_size (9)', '4');
  // on a worker thread the refusal crosses back as the same TarflowError
  await rejects(() => sample({ checkpoint: ckpt, out: join(dir, 'w.png'), count: 2, labels: 3 }), INVALID, 'labels[0]', 'a class index in 0..2', '3');
});

test('a misspelt option is refused at every entry point, naming the options and the nearest one', async () => {
  const unknown = (key: string, near?: string) => `the unknown option "${key}"${near ? `; did you mean '${near}'?` : ''}`;
  const data = makeDataset('toy', new Uint8Array(32 * PER), 32, 1, 8, Int32Array.from({ length: 32 }, (_, i) => i % 3));
  const ckpt = join(dir, 'keys.safetensors');
  await saveModel(ckpt, uncond);
  const inline = { inline: true };
  const images = new Uint8Array(2 * PER);
  refuses(() => new TarFlow(base, { devise: 'cpu' } as never), INVALID, 'options', "only the options 'device', 'dtype'", unknown('devise', 'device'));
  refusesFirst(uncond, () => generate(uncond, { count: 1, guidence: 2 } as never), INVALID, 'options', "'guidance'", unknown('guidence', 'guidance'));
  refusesFirst(uncond, () => denoise(uncond, new Float32Array(PER), null, { sigma: 0.1, lamda: 1 } as never), INVALID, 'options', "'lambda'", unknown('lamda', 'lambda'));
  refusesFirst(uncond, () => scoreImages(uncond, images, null, { batchsize: 2 } as never), INVALID, 'options', "'batchSize'", unknown('batchsize', 'batchSize'));
  refusesFirst(uncond, () => evaluateBpd(uncond, data, { limt: 1 } as never), INVALID, 'options', "'limit'", unknown('limt', 'limit'));
  refusesFirst(cond, () => new Trainer(cond, data, { batchsize: 16, step: 5 } as never), INVALID, 'options', "'batchSize'", unknown('batchsize', 'batchSize'));
  await rejects(() => loadModel(ckpt, { precison: 'bf16' } as never), INVALID, 'options', "'precision'", unknown('precison', 'precision'));
  await rejects(() => saveModel(join(dir, 'x.safetensors'), uncond, { dtyp: 'BF16' } as never), INVALID, 'options', "'dtype', 'metadata'", unknown('dtyp', 'dtype'));
  await rejects(() => loadDataset('mnist', 'test', { size: 28, chanels: 1 } as never), INVALID, 'options', "'channels'", unknown('chanels', 'channels'));
  await rejects(() => train({ out: join(dir, 'keys-run'), step: 10 } as never, inline), INVALID, 'spec', "'steps'", unknown('step', 'steps'));
  await rejects(() => train({ out: join(dir, 'keys-run') }, { inlin: true } as never), INVALID, 'options', "'inline'", unknown('inlin', 'inline'));
  await rejects(() => sample({ checkpoint: ckpt, out: join(dir, 'k.png'), count: 1, tempreature: 1 } as never, inline), INVALID, 'spec', "'temperature'", unknown('tempreature', 'temperature'));
  await rejects(() => evaluate({ checkpoint: ckpt, splt: 'test' } as never, inline), INVALID, 'spec', "'split'", unknown('splt', 'split'));
  await rejects(() => score({ checkpoint: ckpt, images: 'x.npy', batch: 2 } as never, inline), INVALID, 'spec', "'batchSize'", unknown('batch'));
  await rejects(() => generateToDisk({ checkpoint: ckpt, out: join(dir, 'keys-gen'), count: 2, shardsize: 1 } as never, inline), INVALID, 'spec', "'shardSize'", unknown('shardsize', 'shardSize'));
  await rejects(() => evalSamples({ checkpoint: ckpt, cuont: 5 } as never, inline), INVALID, 'spec', "'count'", unknown('cuont', 'count'));
  const ref = { images: new Uint8Array(4 * 16), labels: Int32Array.of(0, 1, 2, 3), count: 4, dim: 16 };
  refuses(() => knnClassify(getBackend('cpu'), ref, new Uint8Array(16), 1, { queryblock: 4 } as never), INVALID, 'options', "'queryBlock'", unknown('queryblock', 'queryBlock'));
  assert.not.ok(existsSync(join(dir, 'keys-run')) || existsSync(join(dir, 'keys-gen')), 'a refused job leaves no folder');
  // An option left out by writing it as undefined is no misspelling.
  assert.is(resolveTrainOptions({ batchSize: 16, steps: undefined }, 32).steps, 2);
});

test('callbacks and abort signals are checked up front; a job refused for one never starts its worker', async () => {
  const ckpt = join(dir, 'callbacks.safetensors');
  await saveModel(ckpt, cond);
  const out = join(dir, 'callbacks', 'grid.png');
  const spec = { checkpoint: ckpt, out, count: 2, labels: 0 };
  await rejects(() => sample(spec, { signal: {} as never }), INVALID, 'signal', 'an AbortSignal', '{}');
  await rejects(() => sample(spec, { onProgress: 'x' as never }), INVALID, 'onProgress', 'a function', '"x"');
  await rejects(() => sample(spec, { onLog: 5 as never }), INVALID, 'onLog', 'a function', '5');
  await rejects(() => sample(spec, { inline: 'yes' as never }), INVALID, 'inline', 'true or false', '"yes"');
  // A spec crosses to the worker thread as a copy: what cannot be copied is named, not a DataCloneError.
  await rejects(() => sample({ ...spec, onProgress: () => 1 } as never), INVALID, 'spec.onProgress', 'a value that can be copied to a worker thread', 'a function');
  await rejects(() => sample({ ...spec, seed: Symbol('s') } as never), INVALID, 'spec.seed', 'a value that can be copied to a worker thread', 'a symbol');
  const images = new Uint8Array(2 * PER);
  refusesFirst(cond, () => generate(cond, { count: 2, labels: 0, onProgress: 'x' } as never), INVALID, 'onProgress', 'a function', '"x"');
  refusesFirst(cond, () => generate(cond, { count: 2, labels: 0, signal: true } as never), INVALID, 'signal', 'an AbortSignal', 'true');
  refusesFirst(cond, () => scoreImages(cond, images, null, { onProgress: 1 } as never), INVALID, 'onProgress', 'a function', '1');
  refusesFirst(cond, () => scoreImages(cond, images, null, { signal: 'stop' } as never), INVALID, 'signal', 'an AbortSignal', '"stop"');
  await rejects(() => loadDataset(join(dir, 'none'), 'train', { signal: {} } as never), INVALID, 'signal', 'an AbortSignal', '{}');
  await rejects(() => loadDataset(join(dir, 'none'), 'train', { onProgress: 'x' } as never), INVALID, 'onProgress', 'a function', '"x"');
  // A worker that was started in spite of a refusal would write the grid shortly after.
  await new Promise((resolve) => setTimeout(resolve, 3000));
  assert.not.ok(existsSync(out), 'a refused job wrote nothing');
});

test('every call that takes a model refuses what is not one, naming the argument', async () => {
  const data = makeDataset('toy', new Uint8Array(4 * PER), 4, 1, 8, null);
  const calls: Array<[string, (m: never) => unknown]> = [
    ['generate', (m) => generate(m, { count: 1 })],
    ['denoise', (m) => denoise(m, new Float32Array(PER), null, { sigma: 0.1 })],
    ['resolveLabels', (m) => resolveLabels(m, 1, undefined)],
    ['defaultTemperature', (m) => defaultTemperature(m)],
    ['scoreImages', (m) => scoreImages(m, new Uint8Array(PER), null)],
    ['evaluateBpd', (m) => evaluateBpd(m, data)],
    ['stateDict', (m) => stateDict(m)],
    ['loadStateDict', (m) => loadStateDict(m, new Map())],
    ['Trainer', (m) => new Trainer(m, data, { batchSize: 2 })],
    ['checkMnistConditional', (m) => checkMnistConditional(m)],
  ];
  for (const [what, call] of calls) {
    for (const [value, got] of [[null, 'null'], ['mnist-cond', '"mnist-cond"'], [{ config: base }, '{config: {inChannels: 1']] as const) {
      try {
        refuses(() => call(value as never), INVALID, 'model', 'a TarFlow model', got);
      } catch (err) {
        throw new Error(`${what}: ${(err as Error).message}`);
      }
    }
  }
  await rejects(() => saveModel(join(dir, 'not-a-model.safetensors'), 'mnist-cond' as never), INVALID, 'model', 'a TarFlow model', '"mnist-cond"');
  await rejects(() => evaluateSamples(null as never), INVALID, 'model', 'a TarFlow model', 'null');
  // A model from a second installed copy of the package: instanceof fails, and the message says why.
  const otherCopy = new (class TarFlow {})();
  for (const [what, call] of calls) {
    assert.throws(() => call(otherCopy as never), (e: Error) => (e as TarflowError).code === INVALID && /another copy of the tarflow package/.test(e.message), what);
  }
});

test('class names that a checkpoint could not record are refused where a dataset is made or trained on', () => {
  const images = new Uint8Array(6 * PER);
  const labels = Int32Array.from({ length: 6 }, (_, i) => i % 3);
  // Taken as they were, they went into the checkpoint's metadata, which loadModel then refused.
  refuses(() => makeDataset('toy', images, 6, 1, 8, labels, ['a', 'a', 'b']), INVALID, 'toy: classNames', 'distinct', '["a", "a", "b"]');
  refuses(() => makeDataset('toy', images, 6, 1, 8, labels, [1, 2, 3] as never), INVALID, 'toy: classNames', 'distinct', '[1, 2, 3]');
  refuses(() => makeDataset('toy', images, 6, 1, 8, labels, 'abc' as never), INVALID, 'toy: classNames', 'distinct', '"abc"');
  const handMade = { ...makeDataset('toy', images, 6, 1, 8, labels), classNames: ['x', 'x', 'y'] };
  refusesFirst(cond, () => new Trainer(cond, handMade, { batchSize: 2 }), INVALID, 'toy: classNames', 'distinct', '["x", "x", "y"]');
});

test('saveModel refuses class names on the model that loadModel would refuse to read back', async () => {
  const m = new TarFlow({ ...base, numClasses: 3 }, { device: 'cpu', seed: 1 });
  try {
    const path = join(dir, 'names.safetensors');
    for (const [names, got] of [[['a', 'a', 'b'], '["a", "a", "b"]'], [['a', 'b'], '["a", "b"]'], [[1, 2, 3], '[1, 2, 3]']] as const) {
      m.classNames = names as never;
      await rejects(() => saveModel(path, m), INVALID, 'model.classNames', 'a list of 3 distinct names', got);
      assert.not.ok(existsSync(path), 'nothing written');
    }
    m.classNames = ['a', 'b', 'c'];
    await saveModel(path, m);
    const back = await loadModel(path, { device: 'cpu' });
    assert.equal(back.classNames, ['a', 'b', 'c']);
    back.dispose();
  } finally {
    m.dispose();
  }
});

test('a Trainer refuses loader options it does not know, as it refuses training options', () => {
  const data = makeDataset('toy', new Uint8Array(8 * PER), 8, 1, 8, Int32Array.from({ length: 8 }, (_, i) => i % 3));
  refusesFirst(cond, () => new Trainer(cond, data, { batchSize: 2 }, { wokers: 2 } as never), INVALID, 'loaderOptions', "'workers', 'prefetch'", "the unknown option \"wokers\"; did you mean 'workers'?");
  refusesFirst(cond, () => new Trainer(cond, data, { batchSize: 2 }, 'x' as never), INVALID, 'loaderOptions', 'an object', '"x"');
});

test('the dataset loaders called directly check their options as loadDataset does', async () => {
  const missing = join(dir, 'none');
  const unknown = "the unknown option \"sise\"; did you mean 'size'?";
  await rejects(() => loadImageFolderDataset(missing, 'train', { sise: 16 } as never), INVALID, 'options', "'size'", unknown);
  await rejects(() => loadCifarDataset(missing, 'train', { sise: 16 } as never), INVALID, 'options', "'size'", unknown);
  await rejects(() => loadIdxDataset(missing, { sise: 16 } as never), INVALID, 'options', "'size'", unknown);
  for (const load of [() => loadImageFolderDataset(missing, 'train', 5 as never), () => loadCifarDataset(missing, 'train', 5 as never), () => loadIdxDataset(missing, 5 as never)]) {
    try {
      await load();
      assert.unreachable('options 5 taken');
    } catch (err) {
      assert.instance(err, TarflowError);
      assert.is((err as TarflowError).code, INVALID, (err as Error).message);
    }
  }
  await rejects(() => loadImageFolderDataset(missing, 'val' as never), INVALID, 'split', "one of 'train', 'test'", '"val"');
  // a path that is no string is named as such, not looked up as 'null' or converted (a symbol would throw)
  await rejects(() => loadImageFolderDataset(null as never), INVALID, 'root', 'a non-empty string', 'null');
  await rejects(() => loadCifarDataset(5 as never), INVALID, 'path', 'a non-empty string', '5');
  await rejects(() => loadCifarDataset(Symbol('p') as never), INVALID, 'path', 'a non-empty string', 'a symbol');
  await rejects(() => loadModel(Symbol('p') as never), INVALID, 'checkpoint', 'a .safetensors file or the name of a shipped model', 'a symbol');
  await rejects(() => loadCifarDataset(missing, 'val' as never), INVALID, 'split', "one of 'train', 'test'", '"val"');
});

test('training: contradictory or meaningless options are refused, not ignored', async () => {
  refuses(() => checkTrainOptionRelations({ lr: 1e-3, minLr: 1e-2 }), INVALID, 'minLr', 'at most lr (0.001)', '0.01');
  assert.is(resolveTrainOptions({ batchSize: 16, lr: 1e-8 }, 32).minLr, 1e-8, 'a peak below the default floor lowers the floor');
  const inline = { inline: true };
  const out = join(dir, 'never');
  for (const [spec, pattern] of [
    [{ noise: 'uniform', sigma: 0.2 }, /^sigma: the Gaussian noise level does nothing with uniform dequantization \(noise 'uniform', --noise uniform\)/],
    [{ conditional: false, labelDrop: 0.5 }, /^labelDrop: an unconditional model .* has no labels to drop/],
    [{ preset: 'small', config: toReferenceConfig(cond.config) }, /^preset: the model config is given in full/],
    [{ lr: 1e-3, minLr: 1e-2 }, /^minLr: expected at most lr \(0\.001\), got 0\.01/],
  ] as const) {
    try {
      await train({ out, dataset: join(dir, 'none.npy'), ...spec } as never, inline);
      assert.unreachable(JSON.stringify(spec));
    } catch (err) {
      assert.instance(err, TarflowError);
      assert.match((err as Error).message, pattern);
    }
  }
  assert.not.ok(existsSync(out));
});

test('datasets: the MNIST split and the dataset a trainer is given are checked', async () => {
  await rejects(() => loadMnist('training' as never), INVALID, 'split', "one of 'train', 'test'", '"training"');
  try {
    new Trainer(cond, { images: new Uint8Array(10) } as never, { batchSize: 2 });
    assert.unreachable('a bare object taken for a dataset');
  } catch (err) {
    assert.match((err as Error).message, /^data: expected an ImageDataset .*build one from arrays with makeDataset/);
  }
});

test('the default sampling temperature follows the training noise the checkpoint records', () => {
  const m = new TarFlow(base, { device: 'cpu', seed: 1 });
  try {
    assert.is(defaultTemperature(m), 1);
    m.trainingNoise = 'uniform';
    assert.is(defaultTemperature(m), LIKELIHOOD_TEMPERATURE);
  } finally {
    m.dispose();
  }
});

test('command line: each flag is named, with what it must be and what was typed', () => {
  const spec = (...argv: string[]) => {
    const line = parseFlags(argv);
    if (line.kind !== 'run') throw new Error(`not a run: ${line.kind}`);
    return commandSpec(line);
  };
  for (const [argv, name, expected, got] of [
    [['train', '--steps', '0'], '--steps', 'a positive integer', '"0"'],
    [['train', '--lr', '0x10'], '--lr', 'a positive finite number, written in decimal', '"0x10"'],
    [['train', '--lr', '0'], '--lr', 'a positive finite number', '"0"'],
    [['train', '--beta2', '1'], '--beta2', 'a finite number in [0, 1)', '"1"'],
    [['train', '--seed', '4294967296'], '--seed', 'an integer in [0, 4294967296)', '"4294967296"'],
    [['train', '--epochs', 'Infinity'], '--epochs', 'a positive finite number, written in decimal', '"Infinity"'],
    [['train', '--channels', '2'], '--channels', "one of '1', '3'", '"2"'],
    [['train', '--label-base', '2'], '--label-base', "one of '0', '1'", '"2"'],
    [['train', '--preset', 'huge'], '--preset', "one of 'tiny', 'small'", '"huge"'],
    [['train', '--noise', 'salt'], '--noise', "one of 'gaussian', 'uniform'", '"salt"'],
    [['train', '--out', ''], '--out', 'a non-empty string', '""'],
    [['train', '--image-size', '5000'], '--image-size', 'an integer in [1, 4096]', '"5000"'],
    [['sample', '--count', ' 5'], '--count', 'a positive integer, written in decimal', '" 5"'],
    [['sample', '--labels', '1,,2'], '--labels', 'a class index or a comma-separated list of them', '"1,,2"'],
    [['sample', '--labels', '0x1'], '--labels', 'a class index or a comma-separated list of them', '"0x1"'],
    [['sample', '--guidance=-1'], '--guidance', 'a finite number >= 0', '"-1"'],
    [['sample', '--attn-temp', '0'], '--attn-temp', 'a positive finite number', '"0"'],
    [['sample', '--guide-what', 'c'], '--guide-what', "one of 'ab', 'a', 'b'", '"c"'],
    [['sample', '--device', 'tpu'], '--device', "one of 'auto', 'cpu', 'cuda'", '"tpu"'],
    [['sample', '--kv-cache', 'fp16'], '--kv-cache', "one of 'fp32', 'bf16'", '"fp16"'],
    [['generate', '--checkpoint', 'm.safetensors', '--out', 'o', '--count', '5', '--precision', 'int8'], '--precision', "one of 'fp32', 'bf16'", '"int8"'],
    [['generate', '--checkpoint', 'm.safetensors', '--out', 'o'], '--count', 'the number of images (the option is required)', 'nothing'],
    [['generate', '--checkpoint', 'm.safetensors', '--out', 'o', '--count', '5', '--format', 'gif'], '--format', "one of 'png', 'npz'", '"gif"'],
    [['generate', '--count', '5', '--out', 'o'], '--checkpoint', "a model checkpoint FILE or a shipped model's name (the option is required)", 'nothing'],
    [['eval', '--checkpoint', 'm', '--split', 'val'], '--split', "one of 'test', 'train'", '"val"'],
    [['score', '--checkpoint', 'm'], '--images', 'the option is required', 'nothing'],
    [['eval-samples', '--checkpoint', 'm', '--k=-1'], '--k', 'a positive integer', '"-1"'],
    [['sample', '--checkpoint', 'm.safetensors', '--attn-temp', '0.5'], '--attn-temp', 'guidance above 0 for it to act', '0.5 with guidance 0'],
    // eval-samples fills in no guidance, even for mnist-cond (its default)
    [['eval-samples', '--attn-temp', '0.5'], '--attn-temp', 'guidance above 0 for it to act', '0.5 with guidance 0'],
    [['generate', '--checkpoint', 'mnist-cond', '--out', 'o', '--count', '5', '--guidance', '1e-400', '--annealed'], '--annealed', 'guidance above 0', 'true with guidance 0'],
    [['demo', '--epochs=-1'], '--epochs', 'a positive finite number', '"-1"'],
  ] as const) {
    refuses(() => spec(...argv), INVALID, name, expected, got);
  }
  refuses(() => parseFlags(['trian']), INVALID, 'command', "one of 'train', 'sample'", '"trian"');
  // a repeated flag takes its last value (a wrapper's defaults can be overridden)
  const twice = parseFlags(['sample', '--count', '2', '--out', 'g.png', '--count=3']);
  assert.is(twice.kind === 'run' && twice.values.count, '3');
  refuses(() => parseFlags(['constructor']), INVALID, 'command', "one of 'train'", '"constructor"');
  for (const argv of [['train', '--bogus'], ['train', '--steps'], ['sample', '--', 'x'], ['eval', '--json=1']]) {
    try {
      parseFlags(argv);
      assert.unreachable(`accepted ${argv.join(' ')}`);
    } catch (err) {
      assert.instance(err, TarflowError);
      assert.is((err as TarflowError).code, INVALID);
    }
  }
  // A misspelt flag is answered with the nearest one; a negative number after a flag is its value, checked as such.
  const misspelt = refuses(() => parseFlags(['generate', '--batchsize', '4']), INVALID, 'option', 'one of the options of tarflow generate', '"--batchsize"');
  assert.match(misspelt.message, /did you mean '--batch-size'\?$/);
  assert.match(refuses(() => parseFlags(['train', '--Steps', '4']), INVALID, 'option', 'tarflow train', '"--Steps"').message, /did you mean '--steps'\?$/);
  assert.match(refuses(() => parseFlags(['sample', '--zzz']), INVALID, 'option', 'tarflow sample', '"--zzz"').message, /`tarflow sample --help` lists them$/);
  refuses(() => spec('sample', '--seed', '-1'), INVALID, '--seed', 'an integer >= 0', '"-1"');
  refuses(() => spec('sample', '--guidance', '-0.5'), INVALID, '--guidance', 'a finite number >= 0', '"-0.5"');
  assert.equal((spec('sample', '--labels', '-1', '--count', '2') as Record<string, unknown>).labels, -1);
  assert.equal((spec('sample', '--labels', '-1,3') as Record<string, unknown>).labels, [-1, 3]);
  // mnist-cond's own guidance (2) is what the shape options act on when --guidance is left out: taken here, and left
  // for the library to fill in (withSamplingDefaults), so that the two cannot disagree.
  const shaped = spec('sample', '--attn-temp', '0.5') as Record<string, unknown>;
  assert.equal([shaped.guidance, shaped.attnTemp, shaped.denoiseSigma], [undefined, 0.5, undefined]);
  assert.is((spec('generate', '--checkpoint', 'mnist-cond', '--out', 'o', '--count', '5', '--annealed') as Record<string, unknown>).guidance, undefined);
  assert.is((spec('sample', '--max-redraws', '8') as Record<string, unknown>).maxRedraws, 8);
  refuses(() => spec('sample', '--max-redraws=-1'), INVALID, '--max-redraws', 'an integer in [0, 968]', '"-1"');
  refuses(() => spec('generate', '--checkpoint', 'mnist-cond', '--out', 'o', '--count', '5', '--max-redraws', '969'), INVALID, '--max-redraws', 'an integer in [0, 968]', '"969"');
  const reduced = spec('eval-samples', '--checkpoint', 'm', '--precision', 'bf16', '--kv-cache', 'fp32') as Record<string, unknown>;
  assert.is(reduced.precision, 'bf16');
  assert.is(reduced.kvCache, 'fp32');
  assert.equal(parseFlags(['help']), { kind: 'usage' });
  assert.equal(parseFlags(['score', '-h']), { kind: 'help', command: 'score' });
  const t = spec('train', '--lr', '1e-3', '--steps', '+20', '--channels', '3', '--label-base', '1', '--clip-grad-norm', '.5') as Record<string, unknown>;
  assert.equal([t.lr, t.steps, t.channels, t.labelBase, t.clipGradNorm, t.out], [1e-3, 20, 3, 1, 0.5, join('runs', 'mnist-tiny')]);
});

test.run();
