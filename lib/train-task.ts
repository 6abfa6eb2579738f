/**
 * The training task behind `tarflow train` and the async API's train(): a run in an out folder, with checkpoints,
 * sample grids and a training state that `resume` continues from (the data it was trained on included). The shared
 * task plumbing (Progress, TaskContext, RateMeter) is tasks.ts; the step, schedule and state (Trainer) train.ts.
 */
import { stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { checkFolderCreatable, makeFolder } from './atomic.js';
import { lockFolder, type FolderLock } from './folder-lock.js';
import { classNamesFromMetadata, configFromMetadata, loadModel, saveModel } from './checkpoint.js';
import { shippedModel } from './pretrained.js';
import { readSafetensors, type SafetensorsFile } from './safetensors.js';
import { PRESETS, fromReferenceConfig, type PresetName, type TarFlowConfig } from './config.js';
import { loadDataset, type ImageDataset, type DatasetLoadOptions } from './data.js';
import { PRECISIONS, type DeviceOption, type FloatDType, type Precision } from './backend.js';
import { layoutSize, parameterLayout } from './params.js';
import { TarflowError } from './errors.js';
import { evaluateBpd } from './evaluate.js';
import { SEED_RULE, TarFlow, checkRecompute } from './model.js';
import { imageGrid, writePng } from './png.js';
import { generate, LIKELIHOOD_TEMPERATURE, type GenerateOptions } from './sampling.js';
import { TRAIN_OPTIONS, Trainer, checkTrainOptionRelations, checkTrainOptions, resumeOptions, type TrainOptions } from './train.js';
import { RateMeter, abortSignalOf, decodeProgress, gridColumns, type TaskContext } from './tasks.js';
import {
  checkBoolean, checkKnownKeys, checkNumber, checkObject, checkOneOf, checkString, optional, parseJson, pickKeys, validationError, optionNames,
} from './validate.js';

export interface TrainSpec extends TrainOptions {
  /**
   * 'mnist', a .npy or .npz file of uint8 images, a CIFAR-10 batch file or folder, an IDX image file, or a folder
   * of PNG/JPEG images (see loadDataset).
   */
  dataset?: string;
  /** Labels .npy for a .npy dataset (or an IDX label file for an IDX dataset). */
  labels?: string;
  /** Image side an image folder is resized and cropped to (default 32, or the config's); a check for other formats. */
  imageSize?: number;
  /** 1 (grey) or 3 (RGB) for an image folder (default 3, or the config's); how flat array rows are read. */
  channels?: number;
  /** 1 when the labels of a .npy/.npz dataset count from 1 (downsampled ImageNet); default 0. */
  labelBase?: 0 | 1;
  /** Model size preset (default 'tiny'), or an explicit config. */
  preset?: PresetName;
  config?: Partial<TarFlowConfig> | Record<string, unknown>;
  /**
   * Start from this checkpoint's weights and config instead of a fresh initialisation (fine-tuning, or carrying a
   * run on whose training state was lost); the optimizer and the learning-rate schedule start afresh. With `resume`
   * the training state's weights win, so a resumed command may keep its `init`.
   */
  init?: string;
  /** Class-conditional (default: true when the dataset has labels). */
  conditional?: boolean;
  /** Output folder for checkpoint.safetensors, train-state.safetensors and sample grids. */
  out: string;
  /** Continue from out/train-state.safetensors. */
  resume?: boolean;
  /** Save a checkpoint and training state every N steps (default 500) and at the end. */
  checkpointEvery?: number;
  /** Write a sample grid every N steps (0 = only at the end; default 0). */
  sampleEvery?: number;
  /** MNIST runs: test-set bits/dim at the end on this many test images (0 = skip; default: all). Other data: `evaluate`. */
  evalImages?: number;
  device?: DeviceOption;
  dtype?: FloatDType;
  /** Matrix products in 'fp32' (default) or 'bf16' mixed precision (see ModelOptions.precision). */
  precision?: Precision;
  /** Recompute earlier blocks' activations in the backward, for a fraction of the memory (ModelOptions.recompute; default 'auto'). */
  recompute?: boolean | 'auto';
  /** Weight initialisation seed (default: the training seed). */
  initSeed?: number;
  /** Guidance used for the sample grids (default 2 for conditional models, 0 otherwise). */
  sampleGuidance?: number;
  /**
   * Temperature of the sample grids (GenerateOptions.temperature; default LIKELIHOOD_TEMPERATURE, 0.7, with uniform
   * dequantization, whose likelihood models often overflow float32 at 1 and draw broken digits; 1 otherwise).
   */
  sampleTemperature?: number;
  /**
   * A label saved with the run's training state (and kept by a resume that does not give one). The demo tags its
   * runs 'demo', and starts over only a folder whose run carries that tag.
   */
  tag?: string;
}

export interface TrainSummary {
  out: string;
  checkpoint: string;
  steps: number;
  epochs: number;
  /** The loss of this call's last finite step (null when it took none). */
  finalLoss: number | null;
  skippedSteps: number;
  seconds: number;
  imagesPerSecond: number;
  testBitsPerDim: number | null;
  samples: string | null;
  aborted: boolean;
  resumedFromStep: number;
}

const TRAIN_SPEC = optionNames<TrainSpec>()({
  ...TRAIN_OPTIONS, dataset: true, labels: true, imageSize: true, channels: true, labelBase: true, preset: true, config: true, init: true,
  conditional: true, out: true, resume: true, checkpointEvery: true, sampleEvery: true, evalImages: true, device: true, dtype: true,
  precision: true, recompute: true, initSeed: true, sampleGuidance: true, sampleTemperature: true, tag: true,
});

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

/**
 * Loader options of a training run. An explicit config fixes the image shape an image folder is decoded to, so
 * the folder fits the model; a contradicting --image-size/--channels is refused rather than silently overridden.
 */
function trainDatasetOptions(spec: TrainSpec, ctx: TaskContext, fixed?: { config: TarFlowConfig; source: string }): DatasetLoadOptions {
  let size = spec.imageSize;
  let channels = spec.channels;
  const cfg = fixed?.config ?? (spec.config ? fromReferenceConfig(spec.config) : undefined);
  if (cfg) {
    const source = fixed?.source ?? 'the model config';
    if ((size !== undefined && size !== cfg.imgSize) || (channels !== undefined && channels !== cfg.inChannels)) {
      throw new TarflowError('ERR_TARFLOW_CONFIG', `${source} takes ${cfg.inChannels} x ${cfg.imgSize} x ${cfg.imgSize} images but ` +
        `channels ${channels ?? cfg.inChannels} and imageSize ${size ?? cfg.imgSize} (--channels, --image-size) were given; drop those options${fixed ? '' : ' or change the config'}`);
    }
    size = cfg.imgSize;
    channels = cfg.inChannels;
  }
  // Classes come from the labels only for a new conditional model without a config.
  const classesFixed = cfg !== undefined || spec.conditional === false;
  return { labels: spec.labels, size, channels, labelBase: spec.labelBase, classesFixed, ...decodeProgress(ctx) };
}

/**
 * Checks everything a training run is told before it reads its data, so that a bad option (the sample
 * guidance, say) is refused at once, not after the run.
 */
function checkTrainSpec(spec: TrainSpec): void {
  checkObject('spec', spec);
  checkKnownKeys('spec', spec, TRAIN_SPEC);
  checkString('out', spec.out);
  checkTrainOptions(pickKeys(spec, TRAIN_OPTIONS));
  if (!spec.resume) checkTrainOptionRelations(pickKeys(spec, TRAIN_OPTIONS));
  optional(spec.dataset, (v) => checkString('dataset', v));
  optional(spec.config, (v) => fromReferenceConfig(v));
  optional(spec.init, (v) => checkString('init', v));
  optional(spec.tag, (v) => checkString('tag', v));
  if (spec.init !== undefined && (spec.config !== undefined || spec.preset !== undefined)) {
    throw new TarflowError('ERR_TARFLOW_INVALID_ARGUMENT', `init: the model config comes from ${spec.init}; drop ${spec.config !== undefined ? 'config' : 'preset'}`);
  }
  if (spec.config !== undefined && spec.preset !== undefined) {
    throw new TarflowError('ERR_TARFLOW_INVALID_ARGUMENT', 'preset: the model config is given in full (config, --config); drop preset (--preset)');
  }
  checkMeaningful(spec, spec.noise, spec.conditional);
  checkOneOf('preset', spec.preset ?? 'tiny', Object.keys(PRESETS) as PresetName[]);
  for (const flag of ['conditional', 'resume'] as const) optional(spec[flag], (v) => checkBoolean(flag, v));
  optional(spec.recompute, checkRecompute);
  checkOneOf('dtype', spec.dtype ?? 'float32', ['float32', 'float64']);
  checkOneOf('precision', spec.precision ?? 'fp32', PRECISIONS);
  optional(spec.initSeed, (v) => checkNumber('initSeed', v, SEED_RULE));
  optional(spec.checkpointEvery, (v) => checkNumber('checkpointEvery', v, { integer: true, min: 1 }));
  optional(spec.sampleEvery, (v) => checkNumber('sampleEvery', v, { integer: true, min: 0 }));
  optional(spec.evalImages, (v) => checkNumber('evalImages', v, { integer: true, min: 0 }));
  optional(spec.sampleGuidance, (v) => checkNumber('sampleGuidance', v, { min: 0 }));
  optional(spec.sampleTemperature, (v) => checkNumber('sampleTemperature', v, { min: 0 }));
}

/**
 * Options that the rest of the run makes meaningless are refused rather than ignored: the run would not do what its
 * command line says. Checked on the spec, and again once an --init checkpoint has said its noise and classes.
 */
function checkMeaningful(given: TrainSpec, noise: TrainOptions['noise'], conditional: boolean | undefined): void {
  if (noise === 'uniform' && given.sigma !== undefined) {
    throw new TarflowError('ERR_TARFLOW_INVALID_ARGUMENT', "sigma: the Gaussian noise level does nothing with uniform dequantization " +
      `(${given.noise === 'uniform' ? "noise 'uniform', --noise uniform" : `the noise ${given.init} was trained with`}); drop sigma (--sigma)`);
  }
  if (conditional === false && given.labelDrop !== undefined) {
    throw new TarflowError('ERR_TARFLOW_INVALID_ARGUMENT', `labelDrop: an unconditional model (${given.conditional === false ? 'conditional: false, --unconditional' : given.init ?? 'unlabelled data'}) ` +
      'has no labels to drop; drop labelDrop (--label-drop)');
  }
}

/** The initial model's config must fit the data: same image shape, and labels exactly when it is conditional. */
function checkInitFits(spec: TrainSpec, config: TarFlowConfig, data: ImageDataset): void {
  const where = `the init checkpoint (--init) ${spec.init}`;
  if (data.channels !== config.inChannels || data.size !== config.imgSize) {
    throw new TarflowError('ERR_TARFLOW_SHAPE', `${where} takes ${config.inChannels} x ${config.imgSize} x ${config.imgSize} images but ${data.name} holds ${data.channels} x ${data.size} x ${data.size}`);
  }
  const conditional = config.numClasses > 0;
  if (spec.conditional !== undefined && spec.conditional !== conditional) {
    throw new TarflowError('ERR_TARFLOW_INVALID_ARGUMENT', `${where} is ${conditional ? `class-conditional (${config.numClasses} classes)` : 'unconditional'}; ${conditional ? 'drop conditional: false (--unconditional)' : 'pass conditional: false (--unconditional)'}`);
  }
  if (conditional && !data.labels) throw new TarflowError('ERR_TARFLOW_DATA', `${where} is class-conditional, but ${data.name} has no labels`);
  if (conditional && data.numClasses > config.numClasses) {
    throw new TarflowError('ERR_TARFLOW_DATA', `${where} knows ${config.numClasses} classes but ${data.name} has ${data.numClasses}`);
  }
}

function modelConfigFor(spec: TrainSpec, data: ImageDataset): TarFlowConfig {
  const conditional = spec.conditional ?? data.labels !== null;
  if (conditional && !data.labels) throw new TarflowError('ERR_TARFLOW_DATA', `a conditional model needs labels, but ${data.name} has none`);
  if (spec.config) {
    const config = fromReferenceConfig(spec.config);
    if (spec.conditional !== undefined && spec.conditional !== config.numClasses > 0) {
      throw new TarflowError('ERR_TARFLOW_CONFIG', `the model config is ${config.numClasses > 0 ? `class-conditional (num_classes ${config.numClasses})` : 'unconditional (num_classes 0)'}, ` +
        `but conditional: ${String(spec.conditional)}${spec.conditional ? '' : ' (--unconditional)'} was given; make num_classes ${spec.conditional ? 'the class count' : '0'} or drop that option`);
    }
    return config;
  }
  const preset = PRESETS[spec.preset ?? 'tiny'];
  let patchSize: number = preset.patchSize;
  if (data.size % patchSize !== 0) {
    const fit = [4, 2, 8, 1].find((p) => data.size % p === 0)!;
    patchSize = fit;
  }
  return fromReferenceConfig({
    inChannels: data.channels, imgSize: data.size, patchSize, channels: preset.channels, numBlocks: preset.numBlocks,
    layersPerBlock: preset.layersPerBlock, nvp: true, numClasses: conditional ? Math.max(data.numClasses, 1) : 0,
  });
}

/**
 * Writes a grid of samples (ten per class, or 100; with guidance and denoising as given) to `path`. A training run's grid is a
 * by-product: when a sample stays non-finite (likelihood models often overflow in the inverse), the run says so and
 * goes on without the grid (returns false) instead of failing after the checkpoint was saved.
 */
async function writeSampleGrid(model: TarFlow, path: string, ctx: TaskContext, options: Omit<GenerateOptions, 'count' | 'labels'>): Promise<boolean> {
  const n = model.config.numClasses > 0 ? model.config.numClasses * 10 : 100;
  let result;
  try {
    result = generate(model, { ...options, count: n });
  } catch (err) {
    if ((err as TarflowError).code !== 'ERR_TARFLOW_NON_FINITE') throw err;
    ctx.log(`no sample grid ${path}: ${(err as Error).message}`);
    return false;
  }
  const { inChannels: C, imgSize: S } = model.config;
  const grid = imageGrid(result.images, n, C, S, S, { cols: gridColumns(model, n, false) });
  await writePng(path, grid.pixels, grid.width, grid.height, C === 1 ? 1 : 3);
  return true;
}

/** The data fields of a run, saved in its training state (with its tag) so that `resume` alone finds the same data again. */
const RUN_DATA_FIELDS = ['dataset', 'labels', 'labelBase', 'imageSize', 'channels'] as const;

/**
 * The spec of a resumed run: data fields not given again come from the saved state (paths were saved absolute, so
 * a resume from another folder finds them); a given one wins (a dataset that moved).
 */
function resumedSpec(spec: TrainSpec, state: SafetensorsFile, path: string): TrainSpec {
  const saved = savedRunData(state, path);
  if (!saved) return spec;
  const filled: TrainSpec = { ...spec };
  for (const key of RUN_DATA_FIELDS) {
    if (filled[key] === undefined && saved[key] !== undefined && saved[key] !== null) (filled as unknown as Record<string, unknown>)[key] = saved[key];
  }
  if (filled.tag === undefined && typeof saved.tag === 'string') filled.tag = saved.tag;
  return filled;
}

/** The data a training state records its run was trained on (metadata 'run'), or null for states written before it was. */
export function savedRunData(state: SafetensorsFile, path: string): Record<string, unknown> | null {
  const raw = state.metadata.run;
  if (raw === undefined) return null;
  return checkObject(`${path}: metadata 'run'`, parseJson(`${path}: metadata 'run'`, raw, 'ERR_TARFLOW_CHECKPOINT'), 'ERR_TARFLOW_CHECKPOINT');
}

function runDataRecord(spec: TrainSpec): string {
  const abs = (p: string | undefined) => (p === undefined || p === 'mnist' ? p : resolve(p));
  return JSON.stringify({
    dataset: abs(spec.dataset ?? 'mnist'), labels: abs(spec.labels), labelBase: spec.labelBase, imageSize: spec.imageSize, channels: spec.channels,
    // null, not left out: a state without the key predates tags (the demo tells those apart by their model)
    tag: spec.tag ?? null,
  });
}

export async function runTrain(given: TrainSpec, ctx: TaskContext): Promise<TrainSummary> {
  checkTrainSpec(given);
  await checkFolderCreatable(given.out, 'out');
  const statePath = join(given.out, 'train-state.safetensors');
  const ckptPath = join(given.out, 'checkpoint.safetensors');
  // A resumed run takes its model, data and options from its training state, so `resume` alone continues it.
  let state: SafetensorsFile | null = null;
  let spec = given;
  let trainOptions: TrainOptions = given;
  let savedDtype: FloatDType | undefined;
  let savedPrecision: Precision | undefined;
  let stateRead: string | null = null;
  if (given.resume) {
    if (!(await exists(statePath))) throw new TarflowError('ERR_TARFLOW_CHECKPOINT', `resume: ${statePath} does not exist; start without resume (--resume)`);
    stateRead = await fileVersion(statePath);
    state = await readSafetensors(statePath);
    ({ options: trainOptions, dtype: savedDtype, precision: savedPrecision } = resumeOptions(given, state, statePath));
    spec = resumedSpec(given, state, statePath);
  } else if (await exists(statePath)) {
    throw new TarflowError('ERR_TARFLOW_INVALID_ARGUMENT', `${given.out} already holds a training run; continue it with resume: true (--resume) or choose another out folder (--out)`);
  } else if (given.init !== undefined && !shippedModel(given.init) && resolve(given.init) === resolve(ckptPath)) {
    throw new TarflowError('ERR_TARFLOW_INVALID_ARGUMENT', `init: ${given.init} is the checkpoint this run would overwrite; copy it elsewhere first or choose another out folder (--out)`);
  }
  const stateConfig = state && spec.config === undefined && spec.preset === undefined && spec.init === undefined ? configFromMetadata(state, statePath) : null;
  const modelOptions = { device: spec.device, dtype: spec.dtype ?? savedDtype, precision: spec.precision ?? savedPrecision, recompute: spec.recompute };
  const initial = spec.init !== undefined ? await loadModel(spec.init, modelOptions) : null;
  const fixedConfig = initial ? { config: initial.config, source: `the init checkpoint (--init) ${spec.init}` }
    : stateConfig ? { config: stateConfig, source: `the run in ${spec.out}` } : undefined;
  let data: ImageDataset;
  try {
    data = await loadDataset(spec.dataset ?? 'mnist', 'train', trainDatasetOptions(spec, ctx, fixedConfig));
    if (initial) checkInitFits(spec, initial.config, data);
  } catch (err) {
    initial?.dispose();
    throw err;
  }
  if (initial && !state) {
    // Fine-tuning keeps the noise the weights were trained with unless told otherwise: a likelihood model
    // (uniform dequantization) trained on with Gaussian noise is a different model, and its loss can overflow.
    if (trainOptions.noise === undefined) trainOptions = { ...trainOptions, noise: initial.trainingNoise };
    else if (trainOptions.noise !== initial.trainingNoise) {
      ctx.log(`${spec.init} was trained with ${initial.trainingNoise} noise; this run trains it on with ${trainOptions.noise} noise, as noise (--noise) says`);
    }
  }
  let config: TarFlowConfig;
  try {
    config = initial?.config ?? stateConfig ?? modelConfigFor(spec, data);
    if (!state) checkMeaningful(given, trainOptions.noise, config.numClasses > 0);
    // The state's config comes from the file too: its tensors must hold a model of that size before one is made
    // (with gradients and moments, four times its parameters). Another config given is left to restoreState to name.
    if (state && JSON.stringify(configFromMetadata(state, statePath)) === JSON.stringify(config)) {
      const params = state.tensors.get('params');
      if (!params || params.shape.reduce((a, b) => a * b, 1) !== layoutSize(parameterLayout(config))) {
        throw new TarflowError('ERR_TARFLOW_CHECKPOINT', `${statePath}: tensor 'params' is missing or has the wrong size for the model config it records; the file is damaged`);
      }
    }
  } catch (err) {
    initial?.dispose();
    throw err;
  }
  const seed = trainOptions.seed ?? 0;
  const model = initial ?? new TarFlow(config, { ...modelOptions, seed: spec.initSeed ?? seed });
  // A resumed run numbers its labels by the class names it started with, as its saved weights do. They are read
  // against the state's own class count: a model given another one (--config) is the config's fault, which
  // restoreState names, not the state's.
  if (state) {
    try {
      const names = classNamesFromMetadata(state, statePath, (configFromMetadata(state, statePath) ?? config).numClasses);
      if (names && names.length === config.numClasses) model.classNames = names;
    } catch (err) {
      model.dispose();
      throw err;
    }
  }
  let trainer: Trainer | undefined;
  let lock: FolderLock | undefined;
  try {
    trainer = new Trainer(model, data, pickKeys(trainOptions, TRAIN_OPTIONS));
    // Made only now that the run's state, weights, data and options have been found and checked: a refused command
    // leaves no folder behind.
    await makeFolder(spec.out, 'out');
    lock = await lockFolder(spec.out, 'out');
    // The checks above ran before the claim: another run may have written the folder since.
    if ((await fileVersion(statePath)) !== stateRead) {
      throw new TarflowError('ERR_TARFLOW_INVALID_ARGUMENT', stateRead === null
        ? `${spec.out} already holds a training run (another process started it meanwhile); continue it with resume: true (--resume) or choose another out folder (--out)`
        : `${statePath} changed while this run started (another process wrote it); run the command again to resume from it`);
    }
  } catch (err) {
    // Native memory first: a release that fails must neither leak it nor replace the error that stopped the run.
    trainer?.dispose();
    model.dispose();
    await lock?.release().catch(() => {});
    throw err;
  }
  try {
    let resumedFrom = 0;
    if (state) {
      trainer.restoreState(state, statePath);
      state = null; // the tensors are copied; let the file's memory go
      resumedFrom = trainer.step;
      if (trainer.step > trainer.totalSteps) {
        throw validationError('ERR_TARFLOW_INVALID_ARGUMENT', 'steps', `at least ${trainer.step}, the steps the run in ${spec.out} has already taken`, String(trainer.totalSteps),
          'give a larger steps (--steps) or epochs (--epochs) to train further');
      }
      ctx.log(trainer.done ? `the run in ${spec.out} has finished its ${trainer.totalSteps} steps; evaluating it` : `resumed from step ${trainer.step} of ${trainer.totalSteps}`);
    } else if (initial) {
      ctx.log(`starting from the weights of ${spec.init}`);
    }
    ctx.log(`model: ${model.parameterCount.toLocaleString('en-US')} parameters on ${model.backend.device}; ` +
      `${trainer.totalSteps} steps of ${trainer.options.batchSize} images (${(trainer.totalSteps / trainer.stepsPerEpoch).toFixed(2)} epochs of ${data.name})`);
    const every = spec.checkpointEvery ?? 500;
    const sampleEvery = spec.sampleEvery ?? 0;
    const guidance = spec.sampleGuidance ?? (config.numClasses > 0 ? 2 : 0);
    const denoiseSigma = trainer.options.noise === 'gaussian' && trainer.options.sigma > 0 ? trainer.options.sigma : undefined;
    const temperature = spec.sampleTemperature ?? (trainer.options.noise === 'uniform' ? LIKELIHOOD_TEMPERATURE : 1);
    const runRecord = runDataRecord(spec);
    const save = async () => {
      await saveModel(ckptPath, model, { metadata: { step: String(trainer.step) } });
      await trainer.saveState(statePath, { run: runRecord });
    };
    const meter = new RateMeter(trainer.step);
    let lastLoss = NaN;
    let aborted = false;
    while (!trainer.done) {
      if (ctx.aborted()) {
        aborted = true;
        break;
      }
      const r = trainer.trainStep();
      if (!r.skipped) lastLoss = r.loss;
      const { rate, etaSeconds } = meter.update(trainer.step, trainer.totalSteps);
      ctx.progress({ task: 'train', done: trainer.step, total: trainer.totalSteps, rate, etaSeconds, loss: r.loss, lr: r.lr,
        message: r.skipped ? `step ${r.step + 1} of ${trainer.totalSteps} skipped (non-finite loss or gradient)` : undefined });
      if (trainer.step % every === 0 && !trainer.done) await save();
      if (sampleEvery > 0 && trainer.step % sampleEvery === 0 && !trainer.done) {
        await writeSampleGrid(model, join(spec.out, `samples-${String(trainer.step).padStart(6, '0')}.png`), ctx, { guidance, denoiseSigma, temperature, seed: 1 });
      }
    }
    await save();
    const seconds = meter.seconds();
    const stepsRun = trainer.step - resumedFrom;
    let testBpd: number | null = null;
    let samples: string | null = null;
    if (!aborted) {
      // The evaluation and the grid take minutes on a CPU: a stop request ends them too (the checkpoint is saved).
      const signal = abortSignalOf(ctx);
      try {
        const evalImages = spec.evalImages ?? Infinity;
        if (evalImages > 0 && (spec.dataset ?? 'mnist') === 'mnist') {
          const test = await loadDataset('mnist', 'test');
          const n = Math.min(evalImages, test.count);
          const evalMeter = new RateMeter();
          const r = evaluateBpd(model, test, {
            limit: n, batchSize: 500, signal, onProgress: (done, total) => { ctx.progress({ task: 'evaluate', done, total, ...evalMeter.update(done, total) }); },
          });
          testBpd = r.bitsPerDim;
        } else if (spec.evalImages !== undefined && spec.evalImages > 0) {
          ctx.log(`evalImages (--eval-images) measures the MNIST test set only; for ${data.name} run 'tarflow eval --checkpoint ${ckptPath} --dataset ...'`);
        }
        if (signal.aborted) throw new TarflowError('ERR_TARFLOW_ABORTED', 'stopped before the sample grid');
        const gridPath = join(spec.out, 'samples.png');
        const gridMeter = new RateMeter();
        const written = await writeSampleGrid(model, gridPath, ctx, {
          guidance, denoiseSigma, temperature, seed: 1, signal, onProgress: (done, total) => { ctx.progress({ task: 'sample', done, total, ...gridMeter.update(done, total) }); },
        });
        samples = written ? gridPath : null;
      } catch (err) {
        if ((err as TarflowError).code !== 'ERR_TARFLOW_ABORTED' || !signal.aborted) throw err;
        aborted = true;
      }
    }
    return {
      out: spec.out, checkpoint: ckptPath, steps: trainer.step, epochs: trainer.step / trainer.stepsPerEpoch, finalLoss: Number.isNaN(lastLoss) ? null : lastLoss,
      skippedSteps: trainer.skippedSteps, seconds, imagesPerSecond: seconds > 0 ? (stepsRun * trainer.options.batchSize) / seconds : 0,
      testBitsPerDim: testBpd, samples, aborted, resumedFromStep: resumedFrom,
    };
  } finally {
    trainer.dispose();
    model.dispose();
    await lock.release();
  }
}

/** Size and modification time of a file, or null when there is none: enough to see that another process wrote it. */
async function fileVersion(path: string): Promise<string | null> {
  try {
    const st = await stat(path);
    return `${st.size}:${st.mtimeMs}`;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
}
