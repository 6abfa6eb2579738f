/**
 * Training: the step (forward, backward, gradient clipping, the fused AdamW op), the warm-up + cosine schedule,
 * skipping of non-finite steps, the VP prior update, and saving and resuming the training state. A batch's noise
 * (Gaussian, or uniform dequantization), label drop and flips are drawn by BatchMaker in loader.ts.
 *
 * Every random choice is a pure function of (seed, step), so a run resumed from a saved state continues exactly
 * as an uninterrupted run would, whatever the thread count.
 */
import { PRECISIONS, type FloatDType, type Precision, type Tensor } from './backend.js';
import { toReferenceConfig } from './config.js';
import { classNamesFromMetadata, configFromMetadata } from './checkpoint.js';
import { checkDatasetFits, matchClasses, type ImageDataset } from './data.js';
import { TarflowError } from './errors.js';
import { BatchLoader, EpochOrder, type LoaderOptions } from './loader.js';
import { TRAINING_NOISES, TarFlow, VAR_RATE, checkModel, type TrainingNoise, type Workspace } from './model.js';
import { ParamSet } from './params.js';
import { checkBoolean, checkKnownKeys, checkNumber, checkObject, checkOneOf, describeValue, optional, parseJson, validationError, type NumberRule, type OptionNames } from './validate.js';
import { f32Tensor, readSafetensors, toFloat32, toFloat64, writeSafetensors, type SafetensorsFile, type SafetensorsTensor } from './safetensors.js';

export interface TrainOptions {
  /** Images per step (default 256). */
  batchSize?: number;
  /** Number of passes over the data (default 1). Ignored when `steps` is given. */
  epochs?: number;
  /** Total optimizer steps; overrides epochs. */
  steps?: number;
  /** Peak learning rate (default 2e-3, the small MNIST setting; the paper uses 1e-4 for large models). */
  lr?: number;
  /** Learning rate at the start of warm-up and at the end of the cosine, at most lr (train() refuses more; default 1e-6, or lr when that is lower). */
  minLr?: number;
  /** Warm-up steps (default: one epoch, at most a quarter of the run). */
  warmupSteps?: number;
  beta1?: number;
  beta2?: number;
  eps?: number;
  weightDecay?: number;
  /** 'gaussian' noise augmentation x + sigma*eps (default) or 'uniform' dequantization (likelihood models). */
  noise?: TrainingNoise;
  /** Gaussian noise level (default 0.1, the MNIST setting). */
  sigma?: number;
  /** Probability of dropping a label for classifier-free guidance (default 0.1; conditional models only). */
  labelDrop?: number;
  /** Random horizontal flips (default false; not for digits). */
  hflip?: boolean;
  /** Clip the global gradient norm to this value (default: no clipping). */
  clipGradNorm?: number;
  /** Stop with an error after this many non-finite steps in a row (default 50). */
  maxNonFiniteSteps?: number;
  /** Seed of the data order and every noise draw (default 0). */
  seed?: number;
}

export const TRAIN_OPTIONS = {
  batchSize: true, epochs: true, steps: true, lr: true, minLr: true, warmupSteps: true, beta1: true, beta2: true, eps: true, weightDecay: true,
  noise: true, sigma: true, labelDrop: true, hflip: true, clipGradNorm: true, maxNonFiniteSteps: true, seed: true,
} as const satisfies OptionNames<TrainOptions>;

export type ResolvedTrainOptions = Required<Omit<TrainOptions, 'steps' | 'warmupSteps' | 'clipGradNorm'>> & {
  steps: number;
  warmupSteps: number;
  clipGradNorm: number | null;
};

export interface StepResult {
  step: number;
  loss: number;
  lr: number;
  gradNorm: number;
  skipped: boolean;
}

/** The bounds of each numeric option; the command line checks its flags against the same rules. */
export const trainOptionRules = {
  batchSize: { integer: true, min: 1 },
  epochs: { above: 0 },
  steps: { integer: true, min: 1 },
  lr: { above: 0 },
  minLr: { min: 0 },
  warmupSteps: { integer: true, min: 0 },
  beta1: { min: 0, below: 1 },
  beta2: { min: 0, below: 1 },
  eps: { above: 0 },
  weightDecay: { min: 0 },
  sigma: { min: 0 },
  labelDrop: { min: 0, max: 1 },
  clipGradNorm: { above: 0 },
  maxNonFiniteSteps: { integer: true, min: 1 },
  // the data order's generator takes a 32-bit seed
  seed: { integer: true, min: 0, below: 2 ** 32 },
} as const satisfies Record<string, NumberRule>;

/** Checks every option and fills the defaults that do not depend on the dataset, so a run can refuse bad options before reading its data. */
export function checkTrainOptions(o: TrainOptions) {
  checkObject('options', o);
  const num = (name: keyof typeof trainOptionRules) => optional(o[name], (v) => checkNumber(name, v, trainOptionRules[name]));
  const lr = num('lr') ?? 2e-3;
  const minLr = num('minLr') ?? Math.min(1e-6, lr); // a peak below the default floor gets a flat schedule
  return {
    batchSize: num('batchSize') ?? 256,
    epochs: num('epochs') ?? 1,
    steps: num('steps'),
    lr,
    minLr,
    warmupSteps: num('warmupSteps'),
    beta1: num('beta1') ?? 0.9,
    beta2: num('beta2') ?? 0.95,
    eps: num('eps') ?? 1e-8,
    weightDecay: num('weightDecay') ?? 1e-4,
    noise: checkOneOf('noise', o.noise ?? 'gaussian', TRAINING_NOISES),
    sigma: num('sigma') ?? 0.1,
    labelDrop: num('labelDrop') ?? 0.1,
    hflip: checkBoolean('hflip', o.hflip ?? false),
    clipGradNorm: o.clipGradNorm === null ? null : num('clipGradNorm') ?? null,
    maxNonFiniteSteps: num('maxNonFiniteSteps') ?? 50,
    seed: num('seed') ?? 0,
  };
}

/**
 * The options' relations, for options a caller gives (train() and the command line check them on a new run): the
 * schedule runs from minLr up to lr and back, and the other way round it would peak at the ends. Not applied to a
 * saved run's options, which a resume must take as they are.
 */
export function checkTrainOptionRelations(o: TrainOptions): void {
  const { lr, minLr } = checkTrainOptions(o);
  if (minLr > lr) throw validationError('ERR_TARFLOW_INVALID_ARGUMENT', 'minLr', `at most lr (${lr})`, describeValue(minLr), 'lower minLr (--min-lr) or raise lr (--lr)');
}

export function resolveTrainOptions(o: TrainOptions, datasetSize: number): ResolvedTrainOptions {
  const checked = checkTrainOptions(o);
  const { batchSize, epochs } = checked;
  if (batchSize > datasetSize) {
    throw validationError('ERR_TARFLOW_INVALID_ARGUMENT', 'batchSize', `at most the dataset size (${datasetSize} images)`, describeValue(batchSize), 'use a smaller batch');
  }
  const stepsPerEpoch = Math.floor(datasetSize / batchSize);
  const steps = checked.steps ?? Math.max(1, Math.round(epochs * stepsPerEpoch));
  // The paper warms up over one epoch; a run of only a few epochs keeps most of its steps for the cosine.
  return { ...checked, steps, warmupSteps: checked.warmupSteps ?? Math.min(stepsPerEpoch, Math.floor(steps / 4)) };
}

/** Learning rate at `step` (0-based): linear warm-up from minLr to lr, then cosine back to minLr at the last step. */
export function learningRate(o: Pick<ResolvedTrainOptions, 'lr' | 'minLr' | 'warmupSteps' | 'steps'>, step: number): number {
  if (step < o.warmupSteps) return o.minLr + ((o.lr - o.minLr) * step) / o.warmupSteps;
  const span = Math.max(1, o.steps - 1 - o.warmupSteps);
  const t = Math.min(1, (step - o.warmupSteps) / span);
  return o.minLr + 0.5 * (o.lr - o.minLr) * (1 + Math.cos(Math.PI * t));
}

/**
 * The counters of a training state's metadata, checked: a damaged or edited file is refused with the field that is
 * wrong instead of resuming from nonsense.
 */
function readTrainMetadata(file: SafetensorsFile, path: string) {
  if (file.metadata.format !== 'tarflow-train-state' || !file.metadata.train) {
    throw new TarflowError('ERR_TARFLOW_CHECKPOINT', `${path} is not a tarflow training state (train-state.safetensors written by 'tarflow train')`);
  }
  const field = `${path}: metadata 'train'`;
  const train = checkObject(field, parseJson(field, file.metadata.train, 'ERR_TARFLOW_CHECKPOINT'), 'ERR_TARFLOW_CHECKPOINT');
  const count = (name: string, v: unknown) => checkNumber(`${field}.${name}`, v, { integer: true, min: 0 }, 'ERR_TARFLOW_CHECKPOINT');
  const dataset = checkObject(`${field}.dataset`, train.dataset, 'ERR_TARFLOW_CHECKPOINT');
  const options = checkObject(`${field}.options`, train.options, 'ERR_TARFLOW_CHECKPOINT');
  const step = count('step', train.step);
  const updates = count('updates', train.updates);
  if (updates > step) throw validationError('ERR_TARFLOW_CHECKPOINT', `${field}.updates`, `at most step (${step})`, describeValue(updates));
  return {
    step, updates, skippedSteps: count('skippedSteps', train.skippedSteps), nonFiniteRun: count('nonFiniteRun', train.nonFiniteRun),
    datasetCount: count('dataset.count', dataset.count), batchSize: count('options.batchSize', options.batchSize), seed: count('options.seed', options.seed),
    options,
    dtype: optional(train.dtype, (v) => checkOneOf<FloatDType>(`${field}.dtype`, v, ['float32', 'float64'], 'ERR_TARFLOW_CHECKPOINT')),
    // Absent in states written before it was saved: those runs said nothing, and any precision resumes them.
    precision: optional(train.precision, (v) => checkOneOf<Precision>(`${field}.precision`, v, PRECISIONS, 'ERR_TARFLOW_CHECKPOINT')),
  };
}

/** Options a resumed run may change: its length (to extend or shorten it) and when to give up on non-finite steps. */
const RESUME_MAY_CHANGE: ReadonlySet<string> = new Set(['steps', 'epochs', 'maxNonFiniteSteps']);

/**
 * The options of a resumed run: the ones saved in its training state, so `resume` alone continues the same run,
 * with the float type it was saved from. An option given again must equal the saved one (a different learning rate
 * or noise would silently make another run), except the length: `steps` or `epochs` extends or shortens the run,
 * keeping its warm-up.
 */
export function resumeOptions(given: TrainOptions, state: SafetensorsFile, path: string): { options: TrainOptions; dtype: FloatDType | undefined; precision: Precision | undefined } {
  const metadata = readTrainMetadata(state, path);
  const raw = metadata.options as TrainOptions;
  let saved: ReturnType<typeof checkTrainOptions>;
  try {
    saved = checkTrainOptions(raw);
  } catch (err) {
    throw new TarflowError('ERR_TARFLOW_CHECKPOINT', `${path}: the saved training options are damaged: ${(err as Error).message}`, { cause: err });
  }
  const merged: Record<string, unknown> = {};
  for (const key of Object.keys(saved) as Array<keyof typeof saved>) {
    if (key === 'steps' || key === 'epochs') continue;
    const had = saved[key];
    const now = given[key];
    if (now === undefined) {
      merged[key] = had;
    } else if (now !== had && !RESUME_MAY_CHANGE.has(key)) {
      throw validationError('ERR_TARFLOW_INVALID_ARGUMENT', key, `${describeValue(had)}, the value the run in ${path} was trained with`, describeValue(now),
        'a resumed run keeps its options, so leave this one out (or start a new run to change it)');
    } else {
      merged[key] = now;
    }
  }
  if (given.steps !== undefined) merged.steps = given.steps;
  else if (given.epochs !== undefined) merged.epochs = given.epochs;
  else merged.steps = saved.steps;
  return { options: merged as TrainOptions, dtype: metadata.dtype, precision: metadata.precision };
}

export class Trainer {
  readonly options: ResolvedTrainOptions;
  readonly stepsPerEpoch: number;
  readonly grads: ParamSet;
  private readonly m: Tensor;
  private readonly v: Tensor;
  private readonly order: EpochOrder;
  private loader: BatchLoader | null = null;
  /** Steps taken so far (skipped ones included). */
  step = 0;
  /** Optimizer updates applied (AdamW's bias-correction count). */
  updates = 0;
  skippedSteps = 0;
  private nonFiniteRun = 0;
  private disposedFlag = false;

  /** The training data, its labels numbered as the model numbers its classes (see matchClasses). */
  readonly data: ImageDataset;

  /** `loaderOptions`: the threads that prepare batches ahead (see BatchLoader); they never change a result. */
  constructor(readonly model: TarFlow, data: ImageDataset, options: TrainOptions = {},
    private readonly loaderOptions: Pick<LoaderOptions, 'workers' | 'prefetch'> = {}) {
    checkModel(model).assertAlive(); // before the gradients and moments are allocated for it
    checkObject('loaderOptions', loaderOptions);
    checkKnownKeys('loaderOptions', loaderOptions, { workers: true, prefetch: true } satisfies OptionNames<typeof loaderOptions>);
    const conditional = model.config.numClasses > 0;
    if (conditional && data?.labels) data = matchClasses(data, model.classNames);
    checkDatasetFits(data, model.config);
    this.data = data;
    checkObject('options', options);
    checkKnownKeys('options', options, TRAIN_OPTIONS);
    this.options = resolveTrainOptions(options, data.count);
    this.stepsPerEpoch = Math.floor(data.count / this.options.batchSize);
    const size = model.params.flat.size;
    this.grads = new ParamSet(model.backend, model.config, model.specs, model.dtype);
    this.m = new model.backend.Tensor(model.dtype, [size]);
    this.v = new model.backend.Tensor(model.dtype, [size]);
    this.order = new EpochOrder(data.count, this.options.batchSize, this.options.seed);
    // Only once nothing can be refused: the model then takes what its training defines.
    model.trainingNoise = this.options.noise; // its samples map back to pixels by the inverse of this noise's map
    // It keeps the names of its classes, so that data numbered another way can be matched to them later.
    if (conditional && !model.classNames && data.classNames?.length === model.config.numClasses) model.classNames = [...data.classNames];
  }

  get totalSteps(): number {
    return this.options.steps;
  }

  get epoch(): number {
    return Math.floor(this.step / this.stepsPerEpoch);
  }

  get done(): boolean {
    return this.step >= this.options.steps;
  }

  /** The dataset indices of step `s`. */
  batchIndices(s: number): Uint32Array {
    return this.order.indices(s);
  }

  /** Fills the workspace with step s's augmented batch; the loader's threads start with the first step. */
  private prepareBatch(ws: Workspace, s: number): void {
    this.loader ??= new BatchLoader(this.data, {
      ...this.options, ...this.loaderOptions, dtype: this.model.dtype, labels: this.model.config.numClasses > 0,
    });
    const batch = this.loader.batch(s);
    ws.x.copyFrom(batch.images);
    ws.labels.copyFrom(batch.labels);
  }

  /** One optimizer step. Non-finite losses or gradients skip the update (counted). */
  trainStep(): StepResult {
    this.assertAlive();
    if (this.done) throw new TarflowError('ERR_TARFLOW_INVALID_ARGUMENT', `training is complete (${this.options.steps} steps)`);
    const o = this.options;
    const model = this.model;
    const ops = model.ops;
    const ws = model.workspace(o.batchSize);
    const s = this.step;
    this.prepareBatch(ws, s);
    this.grads.flat.fill(0);
    const { loss } = model.forward(ws);
    model.backward(ws, this.grads);
    const lr = learningRate(o, s);
    const gradNorm = Math.sqrt(ops.sumSquares(this.grads.flat));
    const finite = Number.isFinite(loss) && Number.isFinite(gradNorm);
    if (!finite) {
      this.skippedSteps++;
      this.nonFiniteRun++;
      this.step++;
      if (this.nonFiniteRun >= o.maxNonFiniteSteps) {
        throw new TarflowError('ERR_TARFLOW_NON_FINITE', `${this.nonFiniteRun} training steps in a row had a non-finite loss or gradient (the last was step ${s + 1} of ${o.steps}); lower the learning rate or set clipGradNorm`);
      }
      return { step: s, loss, lr, gradNorm, skipped: true };
    }
    this.nonFiniteRun = 0;
    if (o.clipGradNorm !== null && gradNorm > o.clipGradNorm) {
      ops.axpby(this.grads.flat, this.grads.flat, o.clipGradNorm / gradNorm, 0);
    }
    this.updates++;
    ops.adamw(model.params.flat, this.grads.flat, this.m, this.v, {
      lr, beta1: o.beta1, beta2: o.beta2, eps: o.eps, weightDecay: o.weightDecay, step: this.updates,
    });
    if (!model.config.nvp) ops.varUpdate(model.variance, ws.z, VAR_RATE);
    this.step++;
    return { step: s, loss, lr, gradNorm, skipped: false };
  }

  /**
   * Saves everything a resumed run needs (parameters, prior variance, optimizer moments, counters, options,
   * config) in one safetensors file, written atomically.
   */
  async saveState(path: string, extraMetadata: Record<string, string> = {}): Promise<void> {
    this.assertAlive();
    const model = this.model;
    const f32 = (t: Tensor, shape: number[]): SafetensorsTensor => {
      const a = t.toArray();
      return f32Tensor(a instanceof Float32Array ? a : Float32Array.from(a), shape);
    };
    const size = model.params.flat.size;
    const tensors: Record<string, SafetensorsTensor> = {
      params: f32(model.params.flat, [size]),
      var: f32(model.variance, model.variance.shape),
      'adam.m': f32(this.m, [size]),
      'adam.v': f32(this.v, [size]),
    };
    const meta = {
      ...extraMetadata,
      config: JSON.stringify(toReferenceConfig(model.config)),
      format: 'tarflow-train-state',
      ...(model.classNames ? { class_names: JSON.stringify(model.classNames) } : {}),
      train: JSON.stringify({
        step: this.step, updates: this.updates, skippedSteps: this.skippedSteps, nonFiniteRun: this.nonFiniteRun,
        options: this.options, dataset: { name: this.data.name, count: this.data.count }, dtype: model.dtype, precision: model.precision,
      }),
    };
    if (model.dtype === 'float64') {
      // float64 runs keep full precision so resume stays exact.
      for (const [name, t] of [['params', model.params.flat], ['var', model.variance], ['adam.m', this.m], ['adam.v', this.v]] as const) {
        const a = t.toArray() as Float64Array;
        tensors[name] = { dtype: 'F64', shape: t.shape, data: new Uint8Array(a.buffer, a.byteOffset, a.byteLength) };
      }
    }
    await writeSafetensors(path, tensors, meta);
  }

  /** Restores a state written by saveState into this trainer (same config, dataset size and batch size). */
  async loadState(path: string): Promise<void> {
    this.restoreState(await readSafetensors(path), path);
  }

  /**
   * restoreState for a file already read. Everything is checked before anything is copied, so a refused state
   * leaves the trainer as it was.
   */
  restoreState(file: SafetensorsFile, path: string): void {
    this.assertAlive();
    const train = readTrainMetadata(file, path);
    const cfg = configFromMetadata(file, path);
    if (JSON.stringify(cfg) !== JSON.stringify(this.model.config)) {
      const saved = cfg as unknown as Record<string, unknown>, now = this.model.config as unknown as Record<string, unknown>;
      const differ = [...new Set([...Object.keys(saved), ...Object.keys(now)])].filter((k) => JSON.stringify(saved[k]) !== JSON.stringify(now[k]))
        .map((k) => `${k} ${JSON.stringify(saved[k])} saved, ${JSON.stringify(now[k])} now`);
      throw new TarflowError('ERR_TARFLOW_CHECKPOINT', `${path} was saved for a different model config (${differ.join('; ')}); ` +
        'resume with the same preset/config, or leave both out to take the saved one');
    }
    // The labels were numbered by this model's class names (or by position, without names) when the trainer was made.
    const names = classNamesFromMetadata(file, path, this.model.config.numClasses);
    if (names && JSON.stringify(names) !== JSON.stringify(this.model.classNames)) {
      throw new TarflowError('ERR_TARFLOW_CHECKPOINT', `${path} was saved by a run whose classes are ${names.join(', ')}, but this model's are ` +
        `${this.model.classNames ? this.model.classNames.join(', ') : 'unnamed'}; set model.classNames from the state before making the Trainer (the CLI's --resume does)`);
    }
    if (train.datasetCount !== this.data.count || train.batchSize !== this.options.batchSize || train.seed !== this.options.seed) {
      throw new TarflowError('ERR_TARFLOW_CHECKPOINT', `${path} was saved for another dataset size, batch size or seed; resume with the same training options`);
    }
    if (train.dtype !== undefined && train.dtype !== this.model.dtype) {
      throw new TarflowError('ERR_TARFLOW_CHECKPOINT', `${path} was saved by a ${train.dtype} run, but this model is ${this.model.dtype}; resume with dtype ${train.dtype}`);
    }
    // Another precision would round every product differently from the run it claims to continue.
    if (train.precision !== undefined && train.precision !== this.model.precision) {
      throw new TarflowError('ERR_TARFLOW_CHECKPOINT', `${path} was saved by a run with ${train.precision} matrix products, but this model uses ${this.model.precision}; ` +
        `resume with precision '${train.precision}' (--precision ${train.precision}), or leave it out`);
    }
    const targets = [['params', this.model.params.flat], ['var', this.model.variance], ['adam.m', this.m], ['adam.v', this.v]] as const;
    const sources = targets.map(([name, into]) => {
      const t = file.tensors.get(name);
      if (!t || t.shape.reduce((a, b) => a * b, 1) !== into.size) throw new TarflowError('ERR_TARFLOW_CHECKPOINT', `${path}: tensor '${name}' is missing or has the wrong size`);
      return t;
    });
    targets.forEach(([, into], i) => into.copyFrom(this.model.dtype === 'float64' ? toFloat64(sources[i]) : toFloat32(sources[i])));
    this.step = train.step;
    this.updates = train.updates;
    this.skippedSteps = train.skippedSteps;
    this.nonFiniteRun = train.nonFiniteRun;
  }

  get disposed(): boolean {
    return this.disposedFlag;
  }

  private assertAlive(): void {
    if (this.disposedFlag) throw new TarflowError('ERR_TARFLOW_DISPOSED', 'this trainer was disposed; create a new Trainer (restoreState continues a saved run)');
    this.model.assertAlive();
  }

  /** Frees the gradients, the optimizer moments and the loader's threads (not the model); safe to call twice. */
  dispose(): void {
    this.disposedFlag = true;
    this.grads.dispose();
    this.m.dispose();
    this.v.dispose();
    this.loader?.dispose();
  }
}
