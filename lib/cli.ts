#!/usr/bin/env node
/**
 * The `tarflow` command: train, sample, generate, eval, eval-samples, score and demo (`tarflow --help` lists them
 * with their flags). Progress goes to stderr (a live bar on a terminal, plain lines otherwise); results go to
 * stdout, as JSON with --json.
 */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { existsSync, realpathSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { lockFolder } from './folder-lock.js';
import { configFromMetadata } from './checkpoint.js';
import { TarflowError } from './errors.js';
import { evalSamples, evaluate, generateToDisk, sample, score, train, type JobOptions } from './jobs.js';
import { resolveGuidance } from './guidance.js';
import { SEED_RULE, TRAINING_NOISES } from './model.js';
import { PRESETS, type PresetName } from './config.js';
import type { EvaluateSpec, Progress, SampleSpec, ScoreSpec } from './tasks.js';
import { readConfigFile } from './tasks.js';
import { savedRunData, type TrainSpec } from './train-task.js';
import { readSafetensors } from './safetensors.js';
import type { GenerateSpec } from './batch-generate.js';
import type { EvalSamplesSpec } from './sample-quality.js';
import { withSamplingDefaults } from './pretrained.js';
import { LIKELIHOOD_TEMPERATURE } from './sampling.js';
import { MAX_REDRAWS } from './streams.js';
import { PRECISIONS } from './backend.js';
import { TRAIN_OPTIONS, checkTrainOptionRelations, trainOptionRules, type TrainOptions } from './train.js';
import { checkNumberText, checkOneOf, checkString, describeValue, nearestNames, pickKeys, validationError, type NumberRule } from './validate.js';

export type Values = Record<string, string | boolean | undefined>;

interface Command {
  summary: string;
  usage: string;
  options: NonNullable<ParseArgsConfig['options']>;
  help: Record<string, string>;
  /** The job's spec from the flags: every value checked, nothing loaded or run. */
  spec(v: Values): object;
  /** Runs the job (spec.config holds the --config file's contents, when one was given); each command names its spec type. */
  run(spec: object, job: JobOptions, json: boolean): Promise<unknown>;
}

const common = {
  json: { type: 'boolean' },
  device: { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const;

const commonHelp = {
  json: 'print the result as JSON on stdout (progress stays on stderr)',
  device: "'auto' (default), 'cpu' or 'cuda' (or set TARFLOW_DEVICE)",
  help: 'show this help',
};

const POSITIVE_INT = { integer: true, min: 1 } as const;
const COUNT = { integer: true, min: 0 } as const;
const REDRAWS = { integer: true, min: 0, max: MAX_REDRAWS } as const;

function num(v: Values, name: string, rule: NumberRule): number | undefined {
  const raw = str(v, name);
  return raw === undefined ? undefined : checkNumberText(`--${name}`, raw, rule);
}

function str(v: Values, name: string): string | undefined {
  const raw = v[name];
  return typeof raw === 'string' ? checkString(`--${name}`, raw) : undefined;
}

function missing(name: string, what: string): never {
  throw validationError('ERR_TARFLOW_INVALID_ARGUMENT', `--${name}`, `${what} (the option is required)`, 'nothing');
}

function required(v: Values, name: string, what: string): string {
  return str(v, name) ?? missing(name, what);
}

/**
 * The checkpoint flag as given (`fallback` when absent): a shipped model's name stays a name (the library finds its
 * file), so a generate manifest records the name, which a resume from another installation of the package still finds.
 */
function checkpointArg(v: Values, what: string, fallback?: string): string {
  return str(v, 'checkpoint') ?? fallback ?? missing('checkpoint', what);
}

function oneOf<T extends string>(v: Values, name: string, allowed: readonly T[]): T | undefined {
  const raw = str(v, name);
  return raw === undefined ? undefined : checkOneOf(`--${name}`, raw, allowed);
}

function device(v: Values): 'auto' | 'cpu' | 'cuda' | undefined {
  return oneOf(v, 'device', ['auto', 'cpu', 'cuda']);
}

const INTEGER = /^[+-]?\d+$/;

function labelsArg(v: Values): number[] | number | undefined {
  const raw = str(v, 'labels');
  if (raw === undefined) return undefined;
  const parts = raw.split(',').map((s) => s.trim());
  if (!parts.every((p) => INTEGER.test(p) && Number.isSafeInteger(Number(p)))) {
    throw validationError('ERR_TARFLOW_INVALID_ARGUMENT', '--labels', 'a class index or a comma-separated list of them', describeValue(raw));
  }
  const nums = parts.map(Number);
  return nums.length === 1 ? nums[0] : nums;
}

function labelBaseArg(v: Values): 0 | 1 | undefined {
  const base = oneOf(v, 'label-base', ['0', '1']);
  return base === undefined ? undefined : base === '1' ? 1 : 0;
}

const datasetHelp = "'mnist' (default), a .npy/.npz of uint8 images ((N,H,W), (N,C,H,W), (N,H,W,C) or flat (N,C*S*S) rows), " +
  'a CIFAR-10 batch .bin or its folder, an IDX image file (labels from the *-labels-idx1-ubyte beside it), ' +
  'or a folder of PNG/JPEG images (one subfolder per class, or flat for unlabelled data)';
const labelsHelp = '.npy of integer labels for a .npy dataset (or an IDX label file); the other formats carry their own';
const labelBaseHelp = '1 when .npy/.npz labels count from 1, as in downsampled ImageNet (default 0)';

/**
 * The guidance flags as given. They are checked together here, as the sampler will (shape options without guidance
 * are refused), so that a command line taken here is not refused after the model has loaded: with `checkpoint`'s
 * shipped guidance where --guidance is left out, as the library fills it in (`withSamplingDefaults`; `checkpoint`
 * undefined for a command that fills in nothing). A resume's are checked against its manifest later.
 */
function guidanceArgs(v: Values, checkpoint: string | undefined, resume = false) {
  const g = {
    guidance: num(v, 'guidance', { min: 0 }),
    guideWhat: oneOf(v, 'guide-what', ['ab', 'a', 'b']),
    attnTemp: num(v, 'attn-temp', { above: 0 }),
    annealed: v.annealed === true,
  };
  if (!resume) {
    try {
      resolveGuidance(checkpoint === undefined ? g : withSamplingDefaults({ ...g, checkpoint }));
    } catch (err) {
      if (!(err instanceof TarflowError)) throw err;
      const flags: Record<string, string> = { guideWhat: '--guide-what', attnTemp: '--attn-temp', annealed: '--annealed' };
      throw new TarflowError(err.code, err.message.replace(/^(\w+):/, (whole, name: string) => (flags[name] ? `${flags[name]}:` : whole)), { cause: err });
    }
  }
  return g;
}

const temperatureHelp = `scale of the latent noise (default 1, or ${LIKELIHOOD_TEMPERATURE} for a model trained with uniform dequantization, ` +
  'as mnist-bpd); below 1, cleaner samples with less variety, and fewer overflows in likelihood models';
function temperatureArg(v: Values) {
  return num(v, 'temperature', { min: 0 });
}

/** The precision of a sampler: its matrix products, and the storage of its KV cache (default: the same). */
function samplerPrecisionArgs(v: Values) {
  return { precision: oneOf(v, 'precision', PRECISIONS), kvCache: oneOf(v, 'kv-cache', PRECISIONS) };
}
const samplerPrecisionOptions = { precision: { type: 'string' }, 'kv-cache': { type: 'string' } } as const;
const samplerPrecisionHelp = {
  precision: "'fp32' (default) or 'bf16' matrix products (tensor cores on the GPU; AMX or AVX-512 BF16 on CPUs that have them, else emulated, not faster)",
  'kv-cache': "'fp32' or 'bf16' storage of the sampler's keys and values: half the memory and the bytes read per token (default: --precision)",
};

/** The flags of the training options, each checked by the library's own rule. */
const trainOptionFlags = {
  epochs: 'epochs', steps: 'steps', 'batch-size': 'batchSize', lr: 'lr', 'min-lr': 'minLr', 'warmup-steps': 'warmupSteps',
  'weight-decay': 'weightDecay', beta1: 'beta1', beta2: 'beta2', sigma: 'sigma', 'label-drop': 'labelDrop',
  'clip-grad-norm': 'clipGradNorm', 'max-nonfinite-steps': 'maxNonFiniteSteps', seed: 'seed',
} as const satisfies Record<string, keyof typeof trainOptionRules>;

function trainOptionArgs(v: Values): TrainOptions {
  const options: Record<string, number | undefined> = {};
  for (const [flag, option] of Object.entries(trainOptionFlags)) options[option] = num(v, flag, trainOptionRules[option]);
  return options;
}

const trainOptions = {
  dataset: { type: 'string' }, labels: { type: 'string' }, preset: { type: 'string' }, config: { type: 'string' }, init: { type: 'string' },
  unconditional: { type: 'boolean' }, out: { type: 'string' }, resume: { type: 'boolean' }, epochs: { type: 'string' },
  steps: { type: 'string' }, 'batch-size': { type: 'string' }, lr: { type: 'string' }, 'min-lr': { type: 'string' },
  'warmup-steps': { type: 'string' }, 'weight-decay': { type: 'string' }, beta1: { type: 'string' }, beta2: { type: 'string' },
  noise: { type: 'string' }, sigma: { type: 'string' }, 'label-drop': { type: 'string' }, hflip: { type: 'boolean' },
  'clip-grad-norm': { type: 'string' }, 'max-nonfinite-steps': { type: 'string' }, seed: { type: 'string' },
  'checkpoint-every': { type: 'string' }, 'sample-every': { type: 'string' }, 'sample-temperature': { type: 'string' },
  'eval-images': { type: 'string' }, precision: { type: 'string' }, recompute: { type: 'boolean' },
  'image-size': { type: 'string' }, channels: { type: 'string' }, 'label-base': { type: 'string' },
  ...common,
} as const;

const trainHelp: Record<string, string> = {
  dataset: datasetHelp,
  labels: labelsHelp,
  'image-size': 'side an image folder is resized and centre-cropped to (default 32, or the --config model\'s); a check for other formats',
  channels: '1 (grey) or 3 (RGB) for an image folder (default 3); how flat .npy/.npz rows are split',
  'label-base': labelBaseHelp,
  preset: "model size: 'tiny' (default; a few minutes on a CPU) or 'small' (the reference MNIST model)",
  config: 'JSON file with a full model config (overrides --preset)',
  init: 'start from this checkpoint\'s weights and config (fine-tuning); the optimizer and schedule start afresh',
  unconditional: 'train without labels',
  out: 'output folder (default runs/<dataset>-<preset>)',
  resume: 'continue the run saved in --out',
  epochs: 'passes over the data (default 1)',
  steps: 'total optimizer steps (overrides --epochs)',
  'batch-size': 'images per step (default 256)',
  lr: 'peak learning rate (default 2e-3)',
  'min-lr': 'learning rate at the ends of the schedule (default 1e-6, or --lr when that is lower)',
  'warmup-steps': 'linear warm-up steps (default: one epoch, at most a quarter of the steps)',
  'weight-decay': 'AdamW weight decay (default 1e-4)',
  beta1: 'AdamW beta1 (default 0.9)',
  beta2: 'AdamW beta2 (default 0.95)',
  noise: "'gaussian' noise augmentation (default) or 'uniform' dequantization (for likelihood models)",
  sigma: 'Gaussian noise level (default 0.1)',
  'label-drop': 'probability of dropping a label, for guidance (default 0.1)',
  hflip: 'random horizontal flips (natural images only)',
  'clip-grad-norm': 'clip the gradient norm to this value',
  'max-nonfinite-steps': 'stop after this many non-finite steps in a row (default 50)',
  seed: 'seed of the data order, noise and initialisation (default 0)',
  'checkpoint-every': 'save every N steps (default 500)',
  'sample-every': 'write a sample grid every N steps (default: only at the end)',
  'sample-temperature': `temperature of the sample grids (default ${LIKELIHOOD_TEMPERATURE} with --noise uniform, else 1)`,
  'eval-images': 'MNIST test images for the final bits/dim (default: all; 0 skips; for other data use tarflow eval)',
  precision: "'fp32' (default) or 'bf16' mixed precision for the matrix products (tensor cores on the GPU; AMX or AVX-512 BF16 on CPUs that have them, else emulated, not faster)",
  recompute: "keep one block's activations and recompute the others in the backward: memory divided by the block count, for about one more forward pass; same results (without this flag it happens only when the activations do not fit)",
};

function trainSpecFrom(v: Values): TrainSpec {
  const preset = oneOf(v, 'preset', Object.keys(PRESETS) as PresetName[]);
  const dataset = str(v, 'dataset') ?? 'mnist';
  // a folder given with a trailing slash still names the run after the folder
  const base = dataset === 'mnist' ? 'mnist' : dataset.replace(/[\\/]+$/, '').replace(/^.*[\\/]/, '').replace(/\.(npy|npz|bin)$/i, '') || 'data';
  const channels = oneOf(v, 'channels', ['1', '3']);
  const spec: TrainSpec = {
    dataset: str(v, 'dataset'), labels: str(v, 'labels'), imageSize: num(v, 'image-size', { integer: true, min: 1, max: 4096 }),
    channels: channels === undefined ? undefined : Number(channels), labelBase: labelBaseArg(v),
    preset, conditional: v.unconditional ? false : undefined,
    out: str(v, 'out') ?? join('runs', `${base}-${preset ?? 'tiny'}`), init: str(v, 'init'), resume: v.resume === true,
    ...trainOptionArgs(v), noise: oneOf(v, 'noise', TRAINING_NOISES), hflip: v.hflip === true || undefined,
    checkpointEvery: num(v, 'checkpoint-every', POSITIVE_INT), sampleEvery: num(v, 'sample-every', COUNT),
    sampleTemperature: num(v, 'sample-temperature', { min: 0 }),
    evalImages: num(v, 'eval-images', COUNT), device: device(v), precision: oneOf(v, 'precision', PRECISIONS), recompute: v.recompute === true || undefined,
  };
  // The flags' relations (--min-lr at most --lr) are checked now too; a resumed run's are checked against its saved options.
  if (!spec.resume) checkTrainOptionRelations(pickKeys(spec, TRAIN_OPTIONS));
  return spec;
}

function printTrainSummary(r: Awaited<ReturnType<typeof train>>, json: boolean) {
  if (json) return;
  const lines = [
    r.aborted ? `stopped at step ${r.steps}; resume with --resume --out ${r.out}`
      : r.resumedFromStep === r.steps ? `the run had already trained its ${r.steps} steps (${r.epochs.toFixed(2)} epochs)`
      : `trained ${r.steps} steps (${r.epochs.toFixed(2)} epochs) in ${r.seconds.toFixed(1)} s, ${r.imagesPerSecond.toFixed(0)} images/s`,
    r.finalLoss !== null ? `final loss ${r.finalLoss.toFixed(4)}${r.skippedSteps ? `, ${r.skippedSteps} non-finite steps skipped` : ''}` : '',
    r.testBitsPerDim !== null ? `test bits/dim: ${r.testBitsPerDim.toFixed(4)}` : '',
    `checkpoint: ${r.checkpoint}`,
    r.samples ? `samples: ${r.samples}` : '',
  ];
  process.stdout.write(lines.filter(Boolean).join('\n') + '\n');
}

const commands: Record<string, Command> = {
  train: {
    summary: 'train a model on MNIST, an array file (.npy, .npz, CIFAR-10, IDX) or a folder of images',
    usage: 'tarflow train [--dataset mnist|FILE|DIR] [--image-size S --channels 1|3] [--preset tiny|small] [--epochs N] [--out DIR] [--resume] ...',
    options: trainOptions,
    help: { ...trainHelp, ...commonHelp },
    spec: trainSpecFrom,
    async run(spec: TrainSpec, job, json) {
      const r = await train(spec, job);
      printTrainSummary(r, json);
      return r;
    },
  },
  sample: {
    summary: 'generate images from a checkpoint (guidance, denoising)',
    usage: 'tarflow sample [--checkpoint FILE|mnist-cond] [--count N] [--labels 3|0,1,2] [--guidance W] [--denoise SIGMA] [--out grid.png|DIR]',
    options: {
      checkpoint: { type: 'string' }, config: { type: 'string' }, count: { type: 'string' }, labels: { type: 'string' },
      guidance: { type: 'string' }, 'guide-what': { type: 'string' }, 'attn-temp': { type: 'string' }, annealed: { type: 'boolean' },
      denoise: { type: 'string' }, seed: { type: 'string' }, temperature: { type: 'string' }, 'batch-size': { type: 'string' }, out: { type: 'string' },
      cols: { type: 'string' }, 'max-redraws': { type: 'string' },
      ...samplerPrecisionOptions, ...common,
    },
    help: {
      checkpoint: `model checkpoint (.safetensors), or a shipped model's name (default: mnist-cond, with guidance 2 and denoising; mnist-bpd samples at temperature ${LIKELIHOOD_TEMPERATURE})`,
      config: 'JSON config for a checkpoint without metadata', count: 'number of images (default 100)',
      labels: 'one class for all images, or a comma-separated list; -1 is no class (default: cycle through the classes)',
      guidance: 'guidance weight w (default 0; 2 for mnist-cond)', 'guide-what': 'guide ab (default), a or b', 'attn-temp': 'attention temperature of the unconditional pass (default 1)',
      annealed: 'anneal guidance over the sequence', denoise: 'denoise with one score step at this noise level, the training sigma (default: none; 0.1 for mnist-cond); Gaussian-noise models only',
      seed: 'noise seed (default 0)', temperature: temperatureHelp, 'batch-size': 'images per batch (default 256)',
      out: 'a .png grid (default samples.png) or a folder for one PNG per image',
      cols: 'grid columns', 'max-redraws': 'redraws of a NaN/Inf sample before the command fails (default 3)', ...samplerPrecisionHelp, ...commonHelp,
    },
    spec(v): SampleSpec {
      // Without --checkpoint the package's own model samples; a shipped model gets the guidance and denoising it
      // was trained for from the library where the flags leave them out.
      const checkpoint = checkpointArg(v, '', 'mnist-cond');
      const labels = labelsArg(v);
      return {
        checkpoint, count: num(v, 'count', POSITIVE_INT) ?? (Array.isArray(labels) ? labels.length : 100), labels,
        ...guidanceArgs(v, checkpoint), denoiseSigma: num(v, 'denoise', { min: 0 }),
        seed: num(v, 'seed', SEED_RULE), temperature: temperatureArg(v), batchSize: num(v, 'batch-size', POSITIVE_INT),
        out: str(v, 'out') ?? 'samples.png', cols: num(v, 'cols', POSITIVE_INT), maxRedraws: num(v, 'max-redraws', REDRAWS), device: device(v),
        ...samplerPrecisionArgs(v),
      };
    },
    async run(spec: SampleSpec, job, json) {
      const r = await sample(spec, job);
      if (!json) {
        process.stdout.write(`wrote ${r.count} samples to ${r.out} in ${r.seconds.toFixed(2)} s (${r.imagesPerSecond.toFixed(1)} images/s)` +
          (r.redraws.length ? `; ${r.redraws.length} redraws of ${new Set(r.redraws.map((d) => d.index)).size} samples that came out non-finite` : '') + '\n');
      }
      return r;
    },
  },
  generate: {
    summary: 'write many samples to disk in resumable shards (PNG files or .npz) with a manifest',
    usage: 'tarflow generate --checkpoint FILE --count N --out DIR [--format png|npz] [--guidance W] [--denoise SIGMA]\n' +
      '       tarflow generate --resume --out DIR   (continues that run with its own options)',
    options: {
      checkpoint: { type: 'string' }, config: { type: 'string' }, count: { type: 'string' }, out: { type: 'string' }, format: { type: 'string' },
      'shard-size': { type: 'string' }, labels: { type: 'string' }, guidance: { type: 'string' }, 'guide-what': { type: 'string' },
      'attn-temp': { type: 'string' }, annealed: { type: 'boolean' }, denoise: { type: 'string' }, seed: { type: 'string' },
      temperature: { type: 'string' }, 'batch-size': { type: 'string' }, resume: { type: 'boolean' }, 'max-redraws': { type: 'string' },
      ...samplerPrecisionOptions, ...common,
    },
    help: {
      checkpoint: "model checkpoint (.safetensors), or a shipped model's name (required unless --resume)", config: 'JSON config for a checkpoint without metadata',
      count: 'number of images (required unless --resume)',
      out: 'output folder (shards and manifest.json)', format: "'png' (one file per image, default) or 'npz' (uint8 (N,H,W,C) arrays under arr_0)",
      'shard-size': 'images per shard (default 1000)', labels: 'one class for all, or a comma-separated list; -1 is no class (default: classes in turn)',
      guidance: 'guidance weight w (default 0; 2 for mnist-cond)', 'guide-what': 'guide ab (default), a or b', 'attn-temp': 'attention temperature of the unconditional pass',
      annealed: 'anneal guidance over the sequence', denoise: 'denoise with one score step at this noise level, the training sigma (default: none; 0.1 for mnist-cond); Gaussian-noise models only', seed: 'noise seed (default 0)',
      temperature: temperatureHelp, 'batch-size': 'images per batch (default 256)', resume: 'continue the run in --out, skipping finished shards; options left out are the run\'s own, one given again must agree ' +
        '(--batch-size, --device and --max-redraws may change)',
      'max-redraws': 'redraws of a NaN/Inf sample before the run fails (default 3); a resume may raise it',
      ...samplerPrecisionHelp, ...commonHelp,
    },
    spec(v): GenerateSpec {
      // A resume takes what is left out from its manifest, so nothing may be filled in here: no defaults, and
      // --annealed left out is not false.
      const resume = v.resume === true;
      // A new run from a shipped model gets the guidance and denoising it was trained for (from the library, as
      // `sample` does).
      const checkpoint = resume && v.checkpoint === undefined ? undefined : checkpointArg(v, 'a model checkpoint FILE or a shipped model\'s name');
      const guidance = guidanceArgs(v, checkpoint, resume);
      return {
        checkpoint,
        count: num(v, 'count', POSITIVE_INT) ?? (resume ? undefined : missing('count', 'the number of images')),
        out: required(v, 'out', 'an output folder'),
        format: oneOf(v, 'format', ['png', 'npz']), shardSize: num(v, 'shard-size', POSITIVE_INT), labels: labelsArg(v),
        ...guidance, annealed: resume && v.annealed === undefined ? undefined : v.annealed === true,
        denoiseSigma: num(v, 'denoise', { min: 0 }), seed: num(v, 'seed', SEED_RULE),
        temperature: temperatureArg(v), maxRedraws: num(v, 'max-redraws', REDRAWS),
        batchSize: num(v, 'batch-size', POSITIVE_INT), resume, device: device(v), ...samplerPrecisionArgs(v),
      };
    },
    async run(spec: GenerateSpec, job, json) {
      const r = await generateToDisk(spec, job);
      if (!json) {
        process.stdout.write(`${r.images} images in ${spec.out} (${r.generated} generated, ${r.skipped} already there) in ${r.seconds.toFixed(1)} s, ` +
          `${r.imagesPerSecond.toFixed(1)} images/s${r.redraws ? `; ${r.redraws} redraws of samples that came out non-finite` : ''}\n`);
      }
      return r;
    },
  },
  'eval-samples': {
    summary: 'kNN accuracy of conditional MNIST samples and their distance to the training set',
    usage: 'tarflow eval-samples [--checkpoint FILE|mnist-cond] [--count N] [--guidance W] [--denoise SIGMA] [--k K] [--json]',
    options: {
      checkpoint: { type: 'string' }, config: { type: 'string' }, count: { type: 'string' }, guidance: { type: 'string' },
      'guide-what': { type: 'string' }, 'attn-temp': { type: 'string' }, annealed: { type: 'boolean' }, denoise: { type: 'string' },
      seed: { type: 'string' }, temperature: { type: 'string' }, k: { type: 'string' }, 'batch-size': { type: 'string' },
      ...samplerPrecisionOptions, ...common,
    },
    help: {
      checkpoint: "class-conditional MNIST checkpoint (.safetensors), or a shipped model's name (default: mnist-cond)", config: 'JSON config for a checkpoint without metadata',
      count: 'samples to generate, classes in turn (default 1000)', guidance: 'guidance weight w (default 0)', 'guide-what': 'guide ab (default), a or b',
      'attn-temp': 'attention temperature of the unconditional pass', annealed: 'anneal guidance over the sequence',
      denoise: 'denoise with one score step at this noise level (the training sigma); Gaussian-noise models only', seed: 'noise seed (default 0)',
      temperature: temperatureHelp, k: 'neighbours that vote (default 3)', 'batch-size': 'images per sampling batch (default 256)', ...samplerPrecisionHelp, ...commonHelp,
    },
    spec(v): EvalSamplesSpec {
      return {
        checkpoint: checkpointArg(v, '', 'mnist-cond'), count: num(v, 'count', POSITIVE_INT),
        // eval-samples measures what it is told: a shipped model's guidance is not filled in (default 0).
        ...guidanceArgs(v, undefined), denoiseSigma: num(v, 'denoise', { min: 0 }), seed: num(v, 'seed', SEED_RULE),
        temperature: temperatureArg(v), k: num(v, 'k', POSITIVE_INT), batchSize: num(v, 'batch-size', POSITIVE_INT), device: device(v), ...samplerPrecisionArgs(v),
      };
    },
    async run(spec: EvalSamplesSpec, job, json) {
      const r = await evalSamples(spec, job);
      if (!json) {
        const pct = (x: number | null) => (x === null ? '-' : `${(100 * x).toFixed(1)}%`);
        const dist = (d: { mean: number; min: number; median: number }) => `mean ${d.mean.toFixed(3)}, median ${d.median.toFixed(3)}, min ${d.min.toFixed(3)}`;
        process.stdout.write([
          `kNN accuracy (k = ${r.k}) of ${r.count} samples: ${pct(r.accuracy)}   (real test images: ${pct(r.testSetAccuracy)})`,
          `per class: ${r.perClassAccuracy.map((a, d) => `${d}:${pct(a)}`).join('  ')}`,
          `distance to nearest training image (pixels in [0,1]):`,
          `  samples:          ${dist(r.nearestDistance)}`,
          `  real test images: ${dist(r.trainingSetNearestBaseline)}`,
          r.redraws ? `${r.redraws} redraws of samples that came out non-finite` : '',
        ].filter(Boolean).join('\n') + '\n');
      }
      return r;
    },
  },
  eval: {
    summary: 'test-set bits/dim of a checkpoint',
    usage: 'tarflow eval [--checkpoint FILE|mnist-bpd] [--dataset mnist|FILE|DIR] [--split test|train] [--limit N]',
    options: {
      checkpoint: { type: 'string' }, config: { type: 'string' }, dataset: { type: 'string' }, labels: { type: 'string' }, 'label-base': { type: 'string' },
      split: { type: 'string' }, limit: { type: 'string' }, 'batch-size': { type: 'string' }, seed: { type: 'string' }, ...common,
    },
    help: {
      checkpoint: "model checkpoint (.safetensors), or a shipped model's name (default: mnist-bpd, the likelihood model)", config: 'JSON config for a checkpoint without metadata',
      dataset: `${datasetHelp}; image folders are decoded at the model's size and channels`, labels: labelsHelp, 'label-base': labelBaseHelp,
      split: "split of MNIST, a CIFAR-10 folder, an .npz with x_train/x_test or an image folder with train/ and test/: 'test' (default) or 'train'",
      limit: 'use only the first N images',
      'batch-size': 'images per batch (default 500)', seed: 'dequantization noise seed (default 0)', ...commonHelp,
    },
    spec(v): EvaluateSpec {
      return {
        checkpoint: checkpointArg(v, '', 'mnist-bpd'), dataset: str(v, 'dataset'), labels: str(v, 'labels'),
        labelBase: labelBaseArg(v), split: oneOf(v, 'split', ['test', 'train']) ?? 'test', limit: num(v, 'limit', POSITIVE_INT),
        batchSize: num(v, 'batch-size', POSITIVE_INT), seed: num(v, 'seed', SEED_RULE), device: device(v),
      };
    },
    async run(spec: EvaluateSpec, job, json) {
      const r = await evaluate(spec, job);
      if (!json) process.stdout.write(`bits/dim: ${r.bitsPerDim.toFixed(4)} over ${r.images} images (${r.seconds.toFixed(1)} s)\n`);
      return r;
    },
  },
  score: {
    summary: 'per-image bits/dim of the images in a .npy file (or any dataset that eval reads)',
    usage: 'tarflow score [--checkpoint FILE|mnist-bpd] --images FILE.npy|FILE|DIR [--labels FILE.npy] [--config FILE.json] [--json]',
    options: {
      checkpoint: { type: 'string' }, config: { type: 'string' }, images: { type: 'string' }, labels: { type: 'string' }, 'label-base': { type: 'string' },
      'batch-size': { type: 'string' }, seed: { type: 'string' }, ...common,
    },
    help: {
      checkpoint: "model checkpoint (.safetensors), or a shipped model's name (default: mnist-bpd, the likelihood model)", config: 'JSON config for a checkpoint without metadata', images: `.npy of uint8 images, or any dataset as for eval --dataset (its test split)`,
      labels: '.npy of integer labels (conditional models)', 'label-base': labelBaseHelp, 'batch-size': 'images per batch (default 256)', seed: 'dequantization noise seed (default 0)', ...commonHelp,
    },
    spec(v): ScoreSpec {
      return {
        checkpoint: checkpointArg(v, '', 'mnist-bpd'), images: required(v, 'images', 'an image FILE.npy (or any dataset eval reads)'),
        labels: str(v, 'labels'), labelBase: labelBaseArg(v), batchSize: num(v, 'batch-size', POSITIVE_INT), seed: num(v, 'seed', SEED_RULE), device: device(v),
      };
    },
    async run(spec: ScoreSpec, job, json) {
      const r = await score(spec, job);
      if (!json) {
        process.stdout.write(r.bitsPerDim.map((b, i) => `${i}\t${b.toFixed(4)}`).join('\n') + `\nmean\t${r.mean.toFixed(4)}\n`);
      }
      return r;
    },
  },
  demo: {
    summary: 'train the tiny preset on MNIST for a few minutes, report test bits/dim, write guided denoised samples',
    usage: 'tarflow demo [--out DIR] [--epochs N]',
    options: { out: { type: 'string' }, epochs: { type: 'string' }, steps: { type: 'string' }, ...common },
    help: { out: 'output folder (default runs/demo)', epochs: 'passes over MNIST (default 2)', steps: 'optimizer steps (overrides --epochs)', ...commonHelp },
    spec(v): TrainSpec {
      return {
        dataset: 'mnist', preset: 'tiny', out: str(v, 'out') ?? join('runs', 'demo'),
        epochs: num(v, 'epochs', trainOptionRules.epochs) ?? 2, steps: num(v, 'steps', trainOptionRules.steps),
        batchSize: 256, lr: 2e-3, noise: 'gaussian', sigma: 0.1, labelDrop: 0.1, sampleGuidance: 2, device: device(v), seed: 0, tag: 'demo',
      };
    },
    async run(spec: TrainSpec, job, json) {
      const statePath = join(spec.out, 'train-state.safetensors');
      // The demo starts its folder over (so the quick start can be run again), but only over a run like its own:
      // another run in a folder given by --out would be lost.
      const other = await otherThanDemoRun(statePath);
      if (other) {
        throw new TarflowError('ERR_TARFLOW_INVALID_ARGUMENT', `${spec.out} holds a training run that is not a demo (${other}), and the demo would start it over; ` +
          `choose another out folder (--out), or continue that run with \`tarflow train --resume --out ${spec.out}\``);
      }
      if (existsSync(spec.out)) {
        // Not under a demo that is running now: its state would be lost.
        const claim = await lockFolder(spec.out, 'out');
        try {
          await rm(statePath, { force: true });
        } finally {
          await claim.release();
        }
      }
      const r = await train(spec, job);
      printTrainSummary(r, json);
      return r;
    },
  },
};

/**
 * Why the training state at `path` is not a demo's, or null when it is one or there is none. A run the demo tagged
 * counts; a plain `tarflow train` makes the same tiny MNIST model and must not be started over. States from before
 * runs were tagged say nothing, and a tiny MNIST model among them is taken for the demo's, as it was then.
 */
async function otherThanDemoRun(path: string): Promise<string | null> {
  if (!existsSync(path)) return null;
  let config, data;
  try {
    const file = await readSafetensors(path);
    config = configFromMetadata(file, path);
    data = savedRunData(file, path);
  } catch (err) {
    return `its training state cannot be read: ${(err as Error).message}`;
  }
  if (data && Object.hasOwn(data, 'tag')) {
    return data.tag === 'demo' ? null : `its training state is tagged ${data.tag === null ? 'nothing' : describeValue(data.tag)}, not 'demo'`;
  }
  const tiny: Record<string, unknown> = { inChannels: 1, imgSize: 28, numClasses: 10, ...PRESETS.tiny };
  const differ = config ? Object.keys(tiny).filter((k) => (config as unknown as Record<string, unknown>)[k] !== tiny[k]) : ['config'];
  if (differ.length) return `its model differs from the tiny MNIST preset in ${differ.join(', ')}`;
  const dataset = data?.dataset;
  return dataset === undefined || dataset === 'mnist' ? null : `it was trained on ${String(dataset)}`;
}

function formatSeconds(s: number): string {
  if (!Number.isFinite(s)) return '--:--';
  s = Math.round(s);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  return (h ? `${h}:${String(m).padStart(2, '0')}` : `${m}`) + `:${String(sec).padStart(2, '0')}`;
}

/** A live bar on a terminal; plain lines (at most every 5 s, and at the end) otherwise. */
function progressReporter(): { onProgress: (p: Progress) => void; onLog: (m: string) => void; end: () => void } {
  const tty = process.stderr.isTTY === true;
  let lastPlain = 0;
  let live = false;
  const unit = (p: Progress) => (p.task === 'train' ? 'steps' : 'img');
  return {
    onProgress(p) {
      if (p.message) {
        if (live) process.stderr.write('\n');
        live = false;
        process.stderr.write(`${p.message}\n`);
      }
      const pct = p.total ? (100 * p.done) / p.total : 0;
      const rate = p.rate ? `${p.rate >= 10 ? p.rate.toFixed(0) : p.rate.toFixed(2)} ${unit(p)}/s` : '';
      const extra = [p.loss !== undefined ? `loss ${p.loss.toFixed(4)}` : '', p.lr !== undefined ? `lr ${p.lr.toExponential(2)}` : '', rate,
        p.etaSeconds !== undefined ? `ETA ${formatSeconds(p.etaSeconds)}` : ''].filter(Boolean).join('  ');
      if (tty) {
        const width = 24;
        const filled = Math.round((width * pct) / 100);
        process.stderr.write(`\r${p.task.padEnd(8)} [${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${p.done}/${p.total}  ${extra}\x1b[K`);
        live = true;
        if (p.done >= p.total) {
          process.stderr.write('\n');
          live = false;
        }
      } else {
        const now = Date.now();
        if (now - lastPlain >= 5000 || p.done >= p.total) {
          lastPlain = now;
          process.stderr.write(`${p.task} ${p.done}/${p.total} (${pct.toFixed(1)}%) ${extra}\n`);
        }
      }
    },
    onLog(m) {
      if (live) process.stderr.write('\n');
      live = false;
      process.stderr.write(`${m}\n`);
    },
    end() {
      if (live) process.stderr.write('\n');
    },
  };
}

function usage(): string {
  const lines = ['usage: tarflow <command> [options]', '', 'commands:'];
  for (const [name, c] of Object.entries(commands)) lines.push(`  ${name.padEnd(8)} ${c.summary}`);
  lines.push('', "'tarflow <command> --help' lists a command's options.");
  return lines.join('\n');
}

/** What each valued flag takes, as the help shows it: N a whole number, X a decimal, or what it names. */
const METAVARS: Readonly<Record<string, string>> = {
  checkpoint: 'FILE', config: 'FILE', init: 'FILE', images: 'FILE', dataset: 'PATH', out: 'PATH',
  lr: 'X', 'min-lr': 'X', 'weight-decay': 'X', beta1: 'X', beta2: 'X', sigma: 'X', 'label-drop': 'X', 'clip-grad-norm': 'X',
  guidance: 'W', denoise: 'SIGMA', temperature: 'T', 'sample-temperature': 'T', 'attn-temp': 'T',
  device: 'NAME', precision: 'NAME', 'kv-cache': 'NAME', noise: 'NAME', format: 'NAME', split: 'NAME', preset: 'NAME', 'guide-what': 'NAME',
};

function commandHelp(c: Command): string {
  const lines = [`usage: ${c.usage}`, '', c.summary, '', 'options:'];
  for (const [opt, spec] of Object.entries(c.options)) {
    // --labels names a file of labels for the data commands and the classes to draw for the sampling ones
    const metavar = opt === 'labels' ? (/^\.npy|file/i.test(c.help.labels ?? '') ? 'FILE' : 'CLASSES') : METAVARS[opt] ?? 'N';
    const flag = `--${opt}${spec.type === 'string' ? ` ${metavar}` : ''}`;
    lines.push(`  ${flag.padEnd(28)} ${c.help[opt] ?? ''}`);
  }
  return lines.join('\n');
}

/** Library option names that the command line spells differently from the camelCase of their flag. */
const OPTION_FLAGS: Readonly<Record<string, string>> = { denoiseSigma: 'denoise', conditional: 'unconditional' };

/**
 * A library message as the command line says it: one that starts with an option's name ("batchSize: expected
 * ...") starts with its flag instead ("--batch-size: expected ..."), so the user is told what to type.
 */
function withFlagNames(message: string, c: Command): string {
  const camel = (flag: string) => flag.replace(/-([a-z0-9])/g, (_, ch: string) => ch.toUpperCase());
  // at the start, and after each '; ' (a message that lists several options, as a refused resume does)
  return message.replace(/(^|; )([A-Za-z]+)((?:\[\d+\])?:)/g, (whole, lead: string, name: string, rest: string) => {
    const flag = OPTION_FLAGS[name] ?? Object.keys(c.options).find((f) => camel(f) === name);
    return flag !== undefined && Object.hasOwn(c.options, flag) ? `${lead}--${flag}${rest}` : whole;
  });
}

export type CommandLine =
  | { kind: 'usage' }
  | { kind: 'help'; command: string }
  | { kind: 'run'; command: string; values: Values };

/**
 * `--seed -1` as `--seed=-1`: node's parser takes a value that starts with a dash for a forgotten value, and its
 * message would hide the real one (a negative number that the flag's own check then names).
 */
function joinNegativeValues(args: readonly string[], options: ParseArgsConfig['options']): string[] {
  const out: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const flag = /^--([^=]+)$/.exec(args[i])?.[1];
    const next = args[i + 1];
    if (flag !== undefined && options?.[flag]?.type === 'string' && next !== undefined && /^-(\d|\.\d|Infinity)/.test(next)) {
      out.push(`${args[i]}=${next}`);
      i++;
    } else {
      out.push(args[i]);
    }
  }
  return out;
}

/**
 * Splits the arguments into a command and its flags. An unknown command or flag, a flag without its value and a
 * stray positional argument are usage errors (exit code 2); the values themselves are checked by commandSpec.
 */
export function parseFlags(argv: readonly string[]): CommandLine {
  const [name, ...rest] = argv;
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') return { kind: 'usage' };
  const command = checkOneOf('command', name, Object.keys(commands));
  const options = commands[command].options;
  let values: Values;
  try {
    // A flag given twice takes its last value, as most commands do: a wrapper script's defaults stay overridable.
    values = parseArgs({ args: joinNegativeValues(rest, options), options, strict: true, allowPositionals: false }).values as Values;
  } catch (err) {
    const code = (err as { code?: string }).code;
    if (!code?.startsWith('ERR_PARSE_ARGS')) throw err;
    const unknown = code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION' ? /'(-[^']*)'/.exec((err as Error).message)?.[1] : undefined;
    if (unknown !== undefined) {
      const near = nearestNames(unknown.replace(/^-+/, ''), Object.keys(options)).map((k) => `'--${k}'`);
      const hint = near.length > 0 ? `did you mean ${near.join(' or ')}?` : `\`tarflow ${command} --help\` lists them`;
      throw validationError('ERR_TARFLOW_INVALID_ARGUMENT', 'option', `one of the options of tarflow ${command}`, describeValue(unknown), hint);
    }
    throw new TarflowError('ERR_TARFLOW_INVALID_ARGUMENT', (err as Error).message, { cause: err });
  }
  return values.help ? { kind: 'help', command } : { kind: 'run', command, values };
}

/** The spec a command's job runs with, from its flags: every value checked, nothing loaded or run. */
export function commandSpec(line: { command: string; values: Values }): object {
  return commands[line.command].spec(line.values);
}

/**
 * The exit code of a command that returned: 130 (as the shell expects of Ctrl-C) only when the interrupt stopped work
 * short, which a returned result says by `aborted` (training saves and returns); a job that finished its last batch
 * while the interrupt waited for it did all it was asked, and a script must not take its output for a partial one.
 */
export function successExitCode(interrupted: boolean, result: unknown): number {
  const stoppedShort = typeof result === 'object' && result !== null && (result as { aborted?: unknown }).aborted === true;
  return interrupted && stoppedShort ? 130 : 0;
}

export async function main(argv: string[]): Promise<number> {
  let line: CommandLine;
  try {
    line = parseFlags(argv);
  } catch (err) {
    if (!(err instanceof TarflowError)) throw err;
    const name = argv[0];
    const known = Object.hasOwn(commands, name);
    // A script that asked for JSON reads the failure from stdout too, as it does for every other error.
    if (argv.includes('--json')) process.stdout.write(JSON.stringify({ error: { code: err.code, message: err.message } }) + '\n');
    process.stderr.write(`tarflow${known ? ` ${name}` : ''}: ${err.message}\n\n${known ? commandHelp(commands[name]) : usage()}\n`);
    return 2;
  }
  if (line.kind === 'usage') {
    process.stdout.write(usage() + '\n');
    return argv.length ? 0 : 1;
  }
  const cmd = commands[line.command];
  if (line.kind === 'help') {
    process.stdout.write(commandHelp(cmd) + '\n');
    return 0;
  }
  const json = line.values.json === true;
  const reporter = progressReporter();
  const controller = new AbortController();
  let interrupts = 0;
  const onSigint = () => {
    interrupts++;
    if (interrupts === 1) {
      const what = line.command === 'train' || line.command === 'demo' ? 'finishing the current step and saving a checkpoint'
        : line.command === 'generate' ? 'stopping after the current batch; the finished shards stay and --resume continues'
        : 'stopping after the current batch';
      reporter.onLog(`interrupted: ${what} (Ctrl-C again to quit at once)`);
      controller.abort();
    } else {
      process.exit(130);
    }
  };
  process.on('SIGINT', onSigint);
  try {
    const spec = commandSpec(line);
    const configFile = str(line.values, 'config');
    if (configFile !== undefined) (spec as { config?: Record<string, unknown> }).config = await readConfigFile(configFile);
    const result = await cmd.run(spec, { onProgress: reporter.onProgress, onLog: reporter.onLog, signal: controller.signal }, json);
    reporter.end();
    if (json) process.stdout.write(JSON.stringify(result, null, 2) + '\n');
    const code = successExitCode(interrupts > 0, result);
    if (interrupts > 0 && code === 0) reporter.onLog('the work had finished before the interrupt could stop it: nothing is left to resume');
    return code;
  } catch (err) {
    reporter.end();
    const e = err as Error & { code?: string };
    const message = e instanceof TarflowError ? withFlagNames(e.message, cmd) : e.message;
    if (json) process.stdout.write(JSON.stringify({ error: { code: e.code ?? 'ERR_TARFLOW_NATIVE', message } }) + '\n');
    process.stderr.write(`tarflow ${line.command}: ${message}${e.code ? ` [${e.code}]` : ''}\n`);
    if (interrupts > 0 && e.code === 'ERR_TARFLOW_ABORTED') return 130; // stopped by Ctrl-C, as the shell expects
    return e instanceof TarflowError || e.code?.startsWith('ERR_TARFLOW') ? 1 : 70;
  } finally {
    process.off('SIGINT', onSigint);
  }
}

const invokedDirectly = process.argv[1] && import.meta.url === new URL(`file://${realpathSync(process.argv[1])}`).href;
if (invokedDirectly) {
  main(process.argv.slice(2)).then((code) => process.exit(code));
}
