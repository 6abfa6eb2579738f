/**
 * The long-running tasks behind the CLI and the async API, and what they share. Each takes a plain, serialisable
 * spec (so it can run on a worker thread) and a context that reports progress and says when to stop. Here: that
 * context (Progress, TaskContext, abortSignalOf, RateMeter), config files, and the smaller tasks: sampling to PNG,
 * dataset bits/dim, per-image scores. Training is train-task.ts, batch generation batch-generate.ts, sample quality
 * sample-quality.ts; task-runners.ts names them all.
 */
import { readFile } from 'node:fs/promises';
import { dirname, extname, join } from 'node:path';
import { checkFolderCreatable, checkFolderEmpty, makeFolder } from './atomic.js';
import { statFileForParsing } from './read-file.js';
import { loadModel } from './checkpoint.js';
import { withSamplingDefaults } from './pretrained.js';
import { fromReferenceConfig } from './config.js';
import { loadDataset, matchClasses, type DatasetLoadOptions } from './data.js';
import { PRECISIONS, type DeviceOption, type Precision } from './backend.js';
import { TarflowError } from './errors.js';
import { checkScoreOptions, evaluateBpd, scoreImages } from './evaluate.js';
import type { TarFlow } from './model.js';
import { imageGrid, nameDigitsFor, pngFileName, writePng } from './png.js';
import { GENERATE_OPTIONS, defaultTemperature, generate, resolveGenerateOptions, type GenerateOptions } from './sampling.js';
import {
  checkKnownKeys, checkLabels, checkNumber, checkObject, checkOneOf, checkString, optional, parseJson, pickKeys, validationError, optionNames, type OptionNames,
} from './validate.js';

export interface Progress {
  task: 'train' | 'sample' | 'generate' | 'evaluate' | 'score';
  /** Units done and total (steps for training, images otherwise). */
  done: number;
  total: number;
  /** Units per second over the recent past. */
  rate?: number;
  etaSeconds?: number;
  loss?: number;
  lr?: number;
  message?: string;
}

export interface TaskContext {
  progress(p: Progress): void;
  log(message: string): void;
  aborted(): boolean;
}

/**
 * An AbortSignal that asks the task's abort flag whenever it is read. The library's loops (scoring, sampling,
 * decoding) read `signal.aborted` before each batch and hold the thread while they run, so no event could bring the
 * flag to them; read through this signal, an abort stops them before their first batch too, not only after one.
 * For such polling loops only: its 'abort' event fires when a read finds the flag set, never on its own, so it is
 * no signal for listeners (addEventListener, AbortSignal.any, streams).
 */
export function abortSignalOf(ctx: TaskContext): AbortSignal {
  const controller = new AbortController();
  return new Proxy(controller.signal, {
    get(signal, key) {
      if (!signal.aborted && ctx.aborted()) controller.abort();
      const value: unknown = Reflect.get(signal, key, signal);
      return typeof value === 'function' ? value.bind(signal) : value;
    },
  });
}

export interface SampleSpec extends Omit<GenerateOptions, 'onProgress' | 'signal' | 'labels'> {
  /** A .safetensors file, or the name of a shipped model ('mnist-cond', 'mnist-bpd'; see loadModel). */
  checkpoint: string;
  config?: Record<string, unknown>;
  labels?: number[] | number;
  /** A .png file (one grid) or a folder (one PNG per image). */
  out: string;
  device?: DeviceOption;
  /** Matrix products of the sampler (see ModelOptions.precision); the KV cache follows unless kvCache is given. */
  precision?: Precision;
  /** Columns of the grid (default ceil(sqrt(count)) or numClasses for conditional models). */
  cols?: number;
  /** Scale of the latent noise (GenerateOptions.temperature); default: defaultTemperature (0.7 for likelihood models, else 1). */
  temperature?: number;
}

export interface SampleSummary {
  out: string;
  count: number;
  seconds: number;
  imagesPerSecond: number;
  redraws: Array<{ index: number; attempt: number }>;
}

export interface EvaluateSpec {
  /** A .safetensors file, or the name of a shipped model ('mnist-cond', 'mnist-bpd'; see loadModel). */
  checkpoint: string;
  config?: Record<string, unknown>;
  dataset?: string;
  labels?: string;
  labelBase?: 0 | 1;
  split?: 'train' | 'test';
  limit?: number;
  batchSize?: number;
  seed?: number;
  device?: DeviceOption;
}

export interface ScoreSpec {
  /** A .safetensors file, or the name of a shipped model ('mnist-cond', 'mnist-bpd'; see loadModel). */
  checkpoint: string;
  config?: Record<string, unknown>;
  /** Any dataset loadDataset reads (its test split), usually a .npy file. */
  images: string;
  labels?: string;
  labelBase?: 0 | 1;
  batchSize?: number;
  seed?: number;
  device?: DeviceOption;
}

const { onProgress: _onProgress, signal: _signal, ...GENERATE_SPEC_OPTIONS } = GENERATE_OPTIONS;
const SAMPLE_SPEC = optionNames<SampleSpec>()({
  ...GENERATE_SPEC_OPTIONS, checkpoint: true, config: true, out: true, device: true, precision: true, cols: true,
});
const EVALUATE_SPEC = {
  checkpoint: true, config: true, dataset: true, labels: true, labelBase: true, split: true, limit: true, batchSize: true, seed: true, device: true,
} as const satisfies OptionNames<EvaluateSpec>;
const SCORE_SPEC = {
  checkpoint: true, config: true, images: true, labels: true, labelBase: true, batchSize: true, seed: true, device: true,
} as const satisfies OptionNames<ScoreSpec>;

export interface ScoreSummary {
  /** Bits/dim of each image, in order. */
  bitsPerDim: number[];
  mean: number;
  /** Indexes of the images whose bits/dim is not finite (the flow overflowed float32); JSON writes those values as null. */
  nonFinite: number[];
}

/** Progress rate over the recent past (a moving average of the report-to-report rate) and the ETA it gives. */
export class RateMeter {
  private readonly start: number;
  private last: number;
  private lastDone: number;
  private rate = 0;
  /** `since`: when the work counted from `startDone` began (default now). */
  constructor(startDone = 0, since = performance.now()) {
    this.lastDone = startDone;
    this.start = since;
    this.last = since;
  }
  update(done: number, total: number): { rate: number; etaSeconds: number } {
    const now = performance.now();
    const dt = (now - this.last) / 1000;
    if (dt > 0 && done > this.lastDone) {
      const r = (done - this.lastDone) / dt;
      this.rate = this.rate === 0 ? r : 0.8 * this.rate + 0.2 * r;
      this.last = now;
      this.lastDone = done;
    }
    return { rate: this.rate, etaSeconds: this.rate > 0 ? (total - done) / this.rate : Infinity };
  }
  seconds(): number {
    return (performance.now() - this.start) / 1000;
  }
}

/**
 * Decoding an image folder can take minutes, and the Progress tasks are the model's own, so it is reported as
 * log lines at most every 5 s; an abort between images stops the decoding.
 */
export function decodeProgress(ctx: TaskContext): Pick<DatasetLoadOptions, 'onProgress' | 'signal'> {
  let last = -Infinity;
  return {
    signal: abortSignalOf(ctx),
    onProgress: (done, total) => {
      const now = performance.now();
      if (done === total || now - last >= 5000) {
        last = now;
        ctx.log(done === 0 ? `decoding ${total} images` : `decoded ${done}/${total} images`);
      }
    },
  };
}

/** A grid's columns: one per class when the labels cycle through the classes (no labels given), else a square. */
export function gridColumns(model: TarFlow, count: number, labelsGiven: boolean): number {
  const classes = model.config.numClasses;
  return classes > 0 && !labelsGiven ? Math.min(count, classes) : Math.ceil(Math.sqrt(count));
}

/** The checkpoint tasks' common fields, checked before the checkpoint is read. */
export function checkCheckpointSpec<S extends { checkpoint?: string; config?: Record<string, unknown> }>(spec: S): asserts spec is S & { checkpoint: string } {
  checkObject('spec', spec);
  checkString('checkpoint', spec.checkpoint);
  optional(spec.config, (v) => fromReferenceConfig(v));
}

async function openModel(spec: { checkpoint: string; config?: Record<string, unknown>; device?: DeviceOption; precision?: Precision }): Promise<TarFlow> {
  return loadModel(spec.checkpoint, { device: spec.device, config: spec.config, precision: spec.precision });
}

/** Image-file names that `sample --out` would otherwise take for a folder name: refused, since only PNG is written. */
const OTHER_IMAGE_EXTENSIONS = ['.jpg', '.jpeg', '.webp', '.gif', '.bmp', '.tif', '.tiff', '.avif'];

export async function runSample(given: SampleSpec, ctx: TaskContext): Promise<SampleSummary> {
  checkObject('spec', given);
  checkKnownKeys('spec', given, SAMPLE_SPEC); // first, so a misspelt checkpoint is named as such
  checkCheckpointSpec(given);
  const spec = withSamplingDefaults(given);
  checkString('out', spec.out);
  resolveGenerateOptions(spec);
  optional(spec.precision, (v) => checkOneOf('precision', v, PRECISIONS));
  optional(spec.cols, (v) => checkNumber('cols', v, { integer: true, min: 1 }));
  const gridFile = /\.png$/i.test(spec.out);
  if (!gridFile && OTHER_IMAGE_EXTENSIONS.includes(extname(spec.out).toLowerCase())) {
    throw validationError('ERR_TARFLOW_INVALID_ARGUMENT', 'out', 'a .png file (one grid) or a folder (one PNG per image)', JSON.stringify(spec.out),
      `samples are written as PNG only: name the grid "${spec.out.slice(0, -extname(spec.out).length)}.png", or convert it afterwards`);
  }
  const outFolder = gridFile ? dirname(spec.out) : spec.out;
  await checkFolderCreatable(outFolder, 'out');
  // One PNG per image: a folder that holds others would mix them in (or have some overwritten), as for generate.
  if (!gridFile) await checkFolderEmpty(outFolder, 'out', 'choose another folder (--out) or empty this one');
  const model = await openModel(spec);
  try {
    const meter = new RateMeter();
    const opts: GenerateOptions = {
      ...pickKeys(spec, GENERATE_OPTIONS), count: spec.count, temperature: spec.temperature ?? defaultTemperature(model),
      onProgress: (done, total) => {
        const { rate, etaSeconds } = meter.update(done, total);
        ctx.progress({ task: 'sample', done, total, rate, etaSeconds });
      },
      signal: abortSignalOf(ctx),
    };
    const { inChannels: C, imgSize: S } = model.config;
    const per = C * S * S;
    const result = generate(model, opts);
    await makeFolder(outFolder, 'out'); // only now: a refused or failed draw leaves no folder
    if (gridFile) {
      const grid = imageGrid(result.images, spec.count, C, S, S, { cols: spec.cols ?? gridColumns(model, spec.count, spec.labels !== undefined) });
      await writePng(spec.out, grid.pixels, grid.width, grid.height, C === 1 ? 1 : 3);
    } else {
      const start = spec.startIndex ?? 0;
      // Named as generate names its PNGs, so that a tool (or script) reads a folder of either the same way.
      const digits = nameDigitsFor(start + spec.count);
      for (let i = 0; i < spec.count; i++) {
        const img = imageGrid(result.images.subarray(i * per, (i + 1) * per), 1, C, S, S, { cols: 1, pad: 0 });
        await writePng(join(spec.out, pngFileName(start + i, digits, result.labels?.[i])), img.pixels, img.width, img.height, C === 1 ? 1 : 3);
      }
    }
    const seconds = meter.seconds();
    return { out: spec.out, count: spec.count, seconds, imagesPerSecond: spec.count / seconds, redraws: result.redraws };
  } finally {
    model.dispose();
  }
}

export async function runEvaluate(spec: EvaluateSpec, ctx: TaskContext): Promise<{ bitsPerDim: number; images: number; seconds: number }> {
  checkObject('spec', spec);
  checkKnownKeys('spec', spec, EVALUATE_SPEC); // first, so a misspelt checkpoint is named as such
  checkCheckpointSpec(spec);
  checkScoreOptions(spec);
  checkOneOf('split', spec.split ?? 'test', ['train', 'test']);
  optional(spec.limit, (v) => checkNumber('limit', v, { integer: true, min: 1 }));
  const model = await openModel(spec);
  try {
    const data = await loadDataset(spec.dataset ?? 'mnist', spec.split ?? 'test', {
      labels: spec.labels, labelBase: spec.labelBase, classesFixed: true, size: model.config.imgSize, channels: model.config.inChannels, ...decodeProgress(ctx),
    });
    const meter = new RateMeter();
    const r = evaluateBpd(model, data, {
      limit: spec.limit, batchSize: spec.batchSize ?? 500, seed: spec.seed, signal: abortSignalOf(ctx),
      onProgress: (done, total) => {
        ctx.progress({ task: 'evaluate', done, total, ...meter.update(done, total) });
      },
    });
    return { ...r, seconds: meter.seconds() };
  } finally {
    model.dispose();
  }
}

export async function runScore(spec: ScoreSpec, ctx: TaskContext): Promise<ScoreSummary> {
  checkObject('spec', spec);
  checkKnownKeys('spec', spec, SCORE_SPEC); // first, so a misspelt checkpoint is named as such
  checkCheckpointSpec(spec);
  checkString('images', spec.images);
  checkScoreOptions(spec);
  const model = await openModel(spec);
  try {
    const data = await loadDataset(spec.images, 'test', {
      labels: spec.labels, labelBase: spec.labelBase, classesFixed: true, size: model.config.imgSize, channels: model.config.inChannels, ...decodeProgress(ctx),
    });
    if (data.channels !== model.config.inChannels || data.size !== model.config.imgSize) {
      throw new TarflowError('ERR_TARFLOW_SHAPE', `${spec.images} holds ${data.channels} x ${data.size} x ${data.size} images but the model takes ${model.config.inChannels} x ${model.config.imgSize} x ${model.config.imgSize}`);
    }
    const labels = model.config.numClasses > 0 ? matchClasses(data, model.classNames).labels : null;
    if (model.config.numClasses > 0 && !labels) {
      ctx.log(`the model is class-conditional but ${data.name} has no labels: each image is scored under the mean class embedding ` +
        '(give labels, --labels FILE.npy, to score them under their classes)');
    }
    if (labels) checkLabels(`${data.name}: labels`, labels, model.config.numClasses, false, 'ERR_TARFLOW_DATA');
    const meter = new RateMeter();
    const bpd = scoreImages(model, data.images, labels, {
      batchSize: spec.batchSize, seed: spec.seed, signal: abortSignalOf(ctx),
      onProgress: (done, total) => {
        ctx.progress({ task: 'score', done, total, ...meter.update(done, total) });
      },
    });
    const arr = Array.from(bpd);
    const nonFinite = arr.flatMap((b, i) => (Number.isFinite(b) ? [] : [i]));
    if (nonFinite.length > 0) {
      ctx.log(`${nonFinite.length} of ${arr.length} images have no finite bits/dim (first: image ${nonFinite[0]}): the flow overflowed float32 on them, ` +
        'which images far from the training data can make it do; JSON writes their values as null');
    }
    return { bitsPerDim: arr, mean: arr.reduce((a, b) => a + b, 0) / arr.length, nonFinite };
  } finally {
    model.dispose();
  }
}

/** Reads a JSON config file (for checkpoints without metadata) and checks it is a model config. */
export async function readConfigFile(path: string): Promise<Record<string, unknown>> {
  let text: string;
  try {
    await statFileForParsing(path, 'config'); // not a device or FIFO, which would never finish
    text = await readFile(path, 'utf8');
  } catch (err) {
    // The file system's code (ENOENT) where there is one, else what the check said.
    const e = err as NodeJS.ErrnoException & { cause?: NodeJS.ErrnoException };
    const code = e.cause?.code ?? (e.code?.startsWith('ERR_TARFLOW') ? undefined : e.code);
    throw validationError('ERR_TARFLOW_CONFIG', `config file ${path}`, 'a readable file', code ?? e.message);
  }
  return parseConfigText(text, `config file ${path}`);
}

/** The text of a config file as an object, checked as a model config (snake_case or camelCase names). */
export function parseConfigText(text: string, source: string): Record<string, unknown> {
  const config = checkObject(source, parseJson(source, text, 'ERR_TARFLOW_CONFIG'), 'ERR_TARFLOW_CONFIG');
  fromReferenceConfig(config);
  return config;
}
