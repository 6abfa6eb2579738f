/**
 * Seeded fuzzing of the parsers of outside data that are not binary formats (those are in formats.test.ts):
 * model configs (as JS values, as config-file text and as checkpoint metadata) and command lines. Every case
 * either gives a result that passes the library's own checks or throws a TarflowError, never anything else.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { commandSpec, parseFlags } from '../lib/cli.js';
import { configFromMetadata } from '../lib/checkpoint.js';
import { fromReferenceConfig, modelShape, toReferenceConfig, validateConfig, type TarFlowConfig } from '../lib/config.js';
import { seededRandom } from '../lib/random.js';
import { TarflowError } from '../lib/errors.js';
import { checkScoreOptions } from '../lib/evaluate.js';
import { resolveGenerateOptions, type GenerateOptions } from '../lib/sampling.js';
import type { SafetensorsFile } from '../lib/safetensors.js';
import { withSamplingDefaults } from '../lib/pretrained.js';
import { parseConfigText } from '../lib/tasks.js';
import { checkTrainOptionRelations, checkTrainOptions } from '../lib/train.js';
import { int, pick, type Rng } from './helpers.js';


/** Runs `cases` seeded cases; each must return (counted as parsed) or throw a TarflowError (rejected). */
function fuzz(label: string, seed: number, cases: number, run: (r: Rng, i: number) => void): number {
  const r = seededRandom(seed);
  let parsed = 0;
  for (let i = 0; i < cases; i++) {
    try {
      run(r, i);
      parsed++;
    } catch (err) {
      if (!(err instanceof TarflowError)) {
        assert.unreachable(`${label} case ${i}: threw ${(err as Error)?.name}: ${(err as Error)?.message}\n${(err as Error)?.stack}`);
      }
    }
  }
  assert.ok(parsed > 0 && parsed < cases, `${label}: ${parsed} of ${cases} parsed; the cases should mix valid and invalid input`);
  return cases;
}

/** A result the parser accepted must pass the library's checks; a refusal here is a bug, not a rejection. */
function mustAccept(label: string, check: () => void): void {
  try {
    check();
  } catch (err) {
    assert.unreachable(`${label}: accepted by the parser but refused afterwards: ${(err as Error).message}`);
  }
}

// ---------------------------------------------------------------------------------------------------------
// model configs

const NUMBERS = [0, -0, 1, -1, 2, 3, 4, 7, 8, 16, 28, 32, 64, 128, 4096, 4097, 1.5, 0.1, 1e-300, 1e300, 2 ** 31, 2 ** 32,
  2 ** 53, 2 ** 53 + 2, -(2 ** 53), Number.MAX_VALUE, 1e15, 2 ** 20, 2 ** 40];
const STRINGS = ['', '8', ' 8', '0x8', 'true', 'null', '日本語', '🙂', '\u0000', '\ud800', 'x'.repeat(1000), '__proto__', 'in_channels'];
const KEYS = [
  'in_channels', 'img_size', 'patch_size', 'channels', 'num_blocks', 'layers_per_block', 'nvp', 'num_classes', 'head_dim', 'expansion',
  'inChannels', 'imgSize', 'patchSize', 'numBlocks', 'layersPerBlock', 'numClasses', 'headDim',
  '__proto__', 'constructor', 'toString', 'hasOwnProperty', '', 'in_channels ', 'IN_CHANNELS', 'dropout', 'heads',
];
// Values a program (not a JSON file) can pass.
const JS_ONLY = [NaN, Infinity, -Infinity, undefined, 1n, Symbol('s'), () => 8, new Float64Array(2), new Date(0)];

function randomValue(r: Rng, depth: number, jsonOnly: boolean): unknown {
  switch (int(r, jsonOnly ? 7 : 8)) {
    case 0: return pick(r, NUMBERS);
    case 1: return int(r, 70);
    case 2: return pick(r, STRINGS);
    case 3: return r() < 0.5;
    case 4: return null;
    case 5: return depth > 3 ? [] : Array.from({ length: int(r, 4) }, () => randomValue(r, depth + 1, jsonOnly));
    case 6: return depth > 3 ? {} : randomObject(r, depth + 1, jsonOnly);
    default: return pick(r, JS_ONLY);
  }
}

/** Sets an own property, even one named __proto__ (as JSON.parse makes it), instead of changing the prototype. */
function setOwn(o: Record<string, unknown>, key: string, value: unknown): void {
  Object.defineProperty(o, key, { value, enumerable: true, writable: true, configurable: true });
}

function randomObject(r: Rng, depth: number, jsonOnly: boolean): Record<string, unknown> {
  const o: Record<string, unknown> = {};
  for (let i = int(r, 5); i > 0; i--) setOwn(o, pick(r, KEYS), randomValue(r, depth, jsonOnly));
  return o;
}

const validBase: TarFlowConfig = validateConfig({ inChannels: 1, imgSize: 8, patchSize: 2, channels: 64, numBlocks: 2, layersPerBlock: 1, numClasses: 10 });

/** A config near a valid one: a few fields changed, dropped or added, or another value altogether. */
function mutatedConfig(r: Rng, jsonOnly: boolean): unknown {
  const o: Record<string, unknown> = r() < 0.5 ? { ...toReferenceConfig(validBase) } : { ...validBase };
  for (let m = int(r, 3); m > 0; m--) {
    const keys = Object.keys(o);
    const roll = r();
    // plausible sizes, which reach the checks across fields (divisibility, patch count, model size)
    if (roll < 0.45) setOwn(o, pick(r, keys), pick(r, [0, 1, 2, 3, 4, 6, 8, 16, 48, 64, 96, 128, 1024, 4096, 65536]));
    else if (roll < 0.65) setOwn(o, pick(r, keys), randomValue(r, 1, jsonOnly));
    else if (roll < 0.75) delete o[pick(r, keys)];
    else if (roll < 0.9) setOwn(o, pick(r, KEYS), randomValue(r, 1, jsonOnly));
    else return randomValue(r, 0, jsonOnly);
  }
  return o;
}

function assertValidConfig(label: string, cfg: TarFlowConfig): void {
  mustAccept(label, () => {
    for (const k of ['inChannels', 'imgSize', 'patchSize', 'channels', 'numBlocks', 'layersPerBlock', 'headDim', 'expansion'] as const) {
      if (!Number.isSafeInteger(cfg[k]) || cfg[k] < 1) throw new Error(`${k} = ${String(cfg[k])}`);
    }
    if (!Number.isSafeInteger(cfg.numClasses) || cfg.numClasses < 0 || typeof cfg.nvp !== 'boolean') throw new Error('numClasses or nvp');
    const shape = modelShape(cfg);
    for (const [k, v] of Object.entries(shape)) if (!Number.isSafeInteger(v) || v < 1) throw new Error(`shape.${k} = ${v}`);
    if (shape.tokens < 2 || cfg.imgSize % cfg.patchSize || cfg.channels % cfg.headDim || cfg.numBlocks * cfg.layersPerBlock > 4096) {
      throw new Error(`inconsistent: ${JSON.stringify(cfg)}`);
    }
    if (JSON.stringify(fromReferenceConfig(toReferenceConfig(cfg))) !== JSON.stringify(cfg)) throw new Error('no round trip');
  });
}

/** Text damage of the kinds a hand-edited or corrupted config file shows. */
function mutatedText(r: Rng, text: string): string {
  switch (int(r, 8)) {
    case 0: return text.slice(0, int(r, text.length + 1));
    case 1: {
      const at = int(r, text.length + 1);
      return text.slice(0, at) + pick(r, ['{', '}', '[', ']', ',', ':', '"', '\\', '0', '9', 'e', '-', ' ', '\u0000', '\ud800', 'é', '1e999', 'NaN']) + text.slice(at);
    }
    case 2: return text.replace(/\d+/, () => pick(r, ['1e999', '-0', '123456789012345678901234567890', '0.0000001', '1E2', '-1e-7']));
    case 3: return text.replace('{', `{"${pick(r, KEYS)}": ${JSON.stringify(randomValue(r, 2, true))},`);
    case 4: {
      const n = 1 + int(r, 5000);
      return '['.repeat(n) + text + ']'.repeat(n);
    }
    case 5: return '\ufeff' + text;
    case 6: return text.replace('{', '{"__proto__": {"in_channels": 3, "nvp": 1},');
    default: return text.replace(/"(\w+)"/, (_, k: string) => `"${k.toUpperCase()}"`);
  }
}

test('fuzz: model configs as values, config-file text and checkpoint metadata', () => {
  const values = fuzz('config value', 2024, 1200, (r, i) => {
    const c = mutatedConfig(r, false);
    assertValidConfig(`config value ${i}`, fromReferenceConfig(c));
    if (c && typeof c === 'object' && 'inChannels' in c) assertValidConfig(`config value ${i}`, validateConfig(c as Partial<TarFlowConfig>));
  });
  const texts = fuzz('config text', 77, 1200, (r, i) => {
    const json = JSON.stringify(mutatedConfig(r, true)) ?? 'null';
    const text = r() < 0.5 ? json : mutatedText(r, json);
    const file: SafetensorsFile = { metadata: { config: text }, tensors: new Map() } as unknown as SafetensorsFile;
    let fromMetadata: TarFlowConfig | null = null;
    let metadataError: unknown = null;
    try {
      fromMetadata = configFromMetadata(file, 'fuzz.safetensors');
    } catch (err) {
      if (!(err instanceof TarflowError)) throw err;
      metadataError = err;
    }
    const parsed = fromReferenceConfig(parseConfigText(text, 'fuzz.json'));
    // the same text is accepted (or refused) whether it is a config file or a checkpoint's metadata
    assert.is(metadataError, null, `config text ${i}: a config file accepted what the checkpoint metadata refused`);
    assert.equal(fromMetadata, parsed);
    assertValidConfig(`config text ${i}`, parsed);
  });
  console.log(`fuzz: ${values} config values and ${texts} config texts (as a config file and as checkpoint metadata), all parsed or refused`);
});

// ---------------------------------------------------------------------------------------------------------
// command lines

const BASE_LINES: string[][] = [
  ['train', '--dataset', 'data/x.npy', '--labels', 'data/y.npy', '--steps', '10', '--batch-size', '16', '--lr', '1e-3', '--out', 'runs/x', '--seed', '3', '--json'],
  ['train', '--preset', 'small', '--epochs', '0.5', '--noise', 'uniform', '--label-drop', '0.2', '--clip-grad-norm', '1', '--channels', '3', '--image-size', '32', '--hflip', '--recompute'],
  ['sample', '--checkpoint', 'model.safetensors', '--count', '6', '--labels', '0,1,2', '--guidance', '1.5', '--denoise', '0.1', '--out', 'grid.png'],
  ['sample', '--count', '10', '--guide-what', 'a', '--attn-temp', '0.5', '--annealed', '--cols', '5', '--device', 'cpu'],
  ['generate', '--checkpoint', 'm.safetensors', '--count', '100', '--out', 'gen', '--format', 'npz', '--shard-size', '10', '--resume', '--precision', 'bf16', '--kv-cache', 'bf16'],
  ['eval-samples', '--checkpoint', 'm.safetensors', '--count', '50', '--k', '5', '--batch-size', '25'],
  ['eval', '--checkpoint', 'm.safetensors', '--dataset', 'x.npy', '--split', 'train', '--limit', '100', '--label-base', '1'],
  ['score', '--checkpoint', 'm.safetensors', '--images', 'x.npy', '--batch-size', '8', '--seed', '0'],
  ['demo', '--out', 'runs/demo', '--steps', '5'],
];
const FLAGS = [...new Set(BASE_LINES.flat().filter((a) => a.startsWith('--')))];
const JUNK_FLAGS = ['--x', '--__proto__', '--constructor', '--toString', '-h', '-x', '---', '--', '-', '--=', '--out=', '--json=true', '--no-json', '--help', '--ΩΩ'];
const VALUES = ['0', '-1', '1e309', '1e-400', 'NaN', 'Infinity', '-Infinity', '0x10', '0b11', '0o7', '1_000', '1e3', '.5', '5.', '+3', '-0',
  '', ' ', '１２', '٣', '9007199254740993', '4294967296', '1e21', 'abc', '\u0000', '🙂', 'x'.repeat(10_000), '1,2', ',', '1,,2', '-1,0',
  'a', 'ab', 'png', 'npz', 'tiny', 'small', 'gaussian', 'uniform', 'cpu', 'cuda', 'auto', 'test', 'train', 'mnist-cond', 'constructor', '__proto__'];
const COMMANDS = ['trian', '', 'constructor', '__proto__', 'toString', 'help', '--help', '-h', 'TRAIN', 'train\u0000', 'hasOwnProperty'];

/** Positions of the values in a line (the words after a flag that takes one). */
const valuePositions = (a: string[]) => a.flatMap((x, i) => (i > 0 && a[i - 1]!.startsWith('--') && !x.startsWith('--') ? [i] : []));

function mutatedLine(r: Rng): string[] {
  const a = [...pick(r, BASE_LINES)];
  for (let m = 1 + int(r, 3); m > 0; m--) {
    const at = 1 + int(r, Math.max(1, a.length - 1));
    const values = valuePositions(a);
    const roll = r();
    if (roll < 0.4 && values.length) a[pick(r, values)] = pick(r, VALUES);
    else if (roll < 0.55) { // --flag=value
      const i = a.findIndex((x, k) => k >= at && x.startsWith('--') && values.includes(k + 1));
      if (i > 0) a.splice(i, 2, `${a[i]}=${pick(r, VALUES)}`);
    } else if (roll < 0.7) a.splice(at, 0, pick(r, FLAGS), pick(r, VALUES));
    else if (roll < 0.78) { // a flag repeated with another value
      const i = a.findIndex((_, k) => k >= at && values.includes(k + 1));
      if (i > 0) a.push(a[i]!, pick(r, VALUES));
    } else if (roll < 0.83) a.splice(at, 1); // a flag without its value, or a value without its flag
    else if (roll < 0.88) a.splice(at, 0, pick(r, JUNK_FLAGS));
    else if (roll < 0.92) a.push('--', ...Array.from({ length: 1 + int(r, 3) }, () => pick(r, VALUES)));
    else if (roll < 0.95) a[0] = pick(r, COMMANDS);
    else a.splice(at, 0, pick(r, VALUES));
  }
  return a;
}

/** The library's own checks of what the command line produced. */
function checkSpec(command: string, spec: Record<string, unknown>): void {
  for (const [k, v] of Object.entries(spec)) {
    if (typeof v === 'number' && !Number.isFinite(v)) throw new Error(`${k} = ${v}`);
    if (v === '') throw new Error(`${k} is empty`);
  }
  // A resumed run's --min-lr is checked against its saved --lr, which the command line cannot know.
  if (command === 'train' || command === 'demo') (spec.resume ? checkTrainOptions : checkTrainOptionRelations)(spec);
  else if (command === 'eval' || command === 'score') checkScoreOptions(spec);
  else {
    // sample and a new generate run sample a shipped model with its own guidance where left out, as the library
    // does before its checks (eval-samples and a resume fill in nothing).
    const filled = (command === 'sample' || command === 'generate') && !spec.resume && typeof spec.checkpoint === 'string'
      ? withSamplingDefaults(spec as Record<string, unknown> & { checkpoint: string }) : spec;
    resolveGenerateOptions({ ...filled, count: spec.count ?? 1000 } as GenerateOptions);
  }
}

test('fuzz: command lines', () => {
  const lines = fuzz('command line', 31337, 1500, (r, i) => {
    const argv = mutatedLine(r);
    const line = parseFlags(argv);
    if (line.kind === 'run') {
      const spec = commandSpec(line) as Record<string, unknown>;
      mustAccept(`command line ${i} (${JSON.stringify(argv).slice(0, 200)})`, () => checkSpec(line.command, spec));
    }
  });
  console.log(`fuzz: ${lines} command lines, all parsed or refused`);
});

test.run();
