/**
 * The TarFlow model (see ../shared/docs/tarflow-spec.md): patchify, N flow blocks of causal Transformer layers
 * with an affine autoregressive coupling, alternating patch order. Forward (data -> latent, with log-dets) saves
 * what the explicit backward needs; the sequential inverse with guidance samples. The denoising step, built from
 * the backward here, is in sampling.ts.
 *
 * Every computation is a call into the backend's op table on native tensors; this file only sequences them.
 */
import type { Backend, FloatDType, MatmulOptions, Precision, Tensor } from './backend.js';
import { PRECISIONS, getBackend, type DeviceOption } from './backend.js';
import { modelShape, validateConfig, type ModelShape, type TarFlowConfig } from './config.js';
import { TarflowError } from './errors.js';
import { ParamSet, parameterLayout, type BlockTensors, type ParamSpec } from './params.js';
import { GUIDANCE_OPTIONS, resolveGuidance, type GuidanceOptions } from './guidance.js';
import { STREAMS } from './streams.js';
import {
  checkArray, checkBoolean, checkKnownKeys, checkLabels, checkLength, checkNumber, checkObject, checkOneOf, describeValue, optional, validationError, optionNames, type OptionNames,
} from './validate.js';

export const LN_EPS = 1e-5;
export const VAR_RATE = 0.1;

export const TRAINING_NOISES = ['gaussian', 'uniform'] as const;
export type TrainingNoise = (typeof TRAINING_NOISES)[number];

export interface ModelOptions {
  device?: DeviceOption;
  /** Working precision: 'float32' (default) or 'float64' (gradient checks). */
  dtype?: FloatDType;
  /**
   * Matrix products in 'fp32' (default) or 'bf16' mixed precision (float32 only): bf16 inputs, fp32 sums, while
   * weights, LayerNorm, softmax, exp, log-dets and the loss stay fp32. The sampler's layers use it too, and its
   * KV cache follows it unless ReverseOptions.kvCache says otherwise.
   */
  precision?: Precision;
  /** Seed of the reference initialisation. */
  seed?: number;
  /** Skip the random initialisation (the caller loads weights). */
  noInit?: boolean;
  /**
   * Train with fused attention (flashAttention: each layer saves a row log-sum-exp [B,H,T] instead of the
   * probabilities [B,H,T,T]). Default: on CUDA with float32 and head dims up to 64, what its kernels cover; the
   * CPU's unfused attention (two GEMMs) trains the small MNIST model about twice as fast as its fused loops.
   */
  fusedAttention?: boolean;
  /**
   * Keep one block's layer activations instead of every block's, and recompute each earlier block's forward in
   * the backward. Activation memory falls by a factor of the block count (8 for the ImageNet 64 model, about
   * 100 GB at batch 32 in float32) for (N-1)/N of a forward pass more work. Results are the same to the bit: the
   * recomputed forward repeats the first. 'auto' (the default) keeps every block's activations when they fit and
   * recomputes, with a warning, when their allocation fails (out of memory, or past setMemoryLimit).
   */
  recompute?: boolean | 'auto';
}

/** Options of the exact inverse (reverse, and so generate): guidance, and the storage of the sampler's KV cache. */
export interface ReverseOptions extends GuidanceOptions {
  /**
   * Cached keys and values in 'fp32', or in 'bf16': half the memory, and half the bytes each token step reads,
   * which bound large-batch sampling on the GPU (float32 models only). Default: the model's precision. Its effect
   * on samples is measured by `npm run bench -- --only kv-cache`.
   */
  kvCache?: Precision;
}

export const MODEL_OPTIONS = {
  device: true, dtype: true, precision: true, seed: true, noInit: true, fusedAttention: true, recompute: true,
} as const satisfies OptionNames<ModelOptions>;
export const REVERSE_OPTIONS = optionNames<ReverseOptions>()({ ...GUIDANCE_OPTIONS, kvCache: true });

/** Seeds of the counter-based generator: the native ops take any integer in [0, 2^53). */
export const SEED_RULE = { integer: true, min: 0 } as const;

/**
 * Saved activations of one layer. attnSaved is what the attention backward needs: the probabilities [B,H,T,T], or
 * with fused attention only each row's log-sum-exp [B,H,T].
 */
interface LayerActs {
  ln1: Tensor; mean1: Tensor; rstd1: Tensor; qkv: Tensor; attnSaved: Tensor; att: Tensor;
  mid: Tensor; ln2: Tensor; mean2: Tensor; rstd2: Tensor; fc1: Tensor; act: Tensor;
}

/** Activations of one block; `layerInputs[l]` is the input of layer l and layerInputs[L] the input of proj_out. */
interface BlockActs {
  orderedInput: Tensor;
  layerInputs: Tensor[];
  layers: LayerActs[];
  couplingParams: Tensor;
  v: Tensor;
  out: Tensor;
}

/** All buffers of a forward and backward at one batch size, allocated once and reused every step. */
export class Workspace {
  readonly tensors: Tensor[] = [];
  x!: Tensor;
  labels!: Tensor;
  patches!: Tensor;
  readonly blocks: BlockActs[] = [];
  logdet!: Tensor;
  sumsq!: Tensor;
  // backward scratch
  dz!: Tensor;
  readonly dIn: Tensor[] = [];
  dv!: Tensor;
  dOrderedInput!: Tensor;
  dout!: Tensor;
  dh!: Tensor;
  dln!: Tensor;
  datt!: Tensor;
  dqkv!: Tensor;
  dact!: Tensor;
  dx!: Tensor;

  /**
   * flashAttention instead of attention (ModelOptions.fusedAttention); with recompute, every block shares one
   * set of layer activations (ModelOptions.recompute).
   */
  constructor(backend: Backend, cfg: TarFlowConfig, s: ModelShape, readonly batch: number, dtype: FloatDType, readonly fusedAttention: boolean,
              readonly recompute = false) {
    try {
      this.allocate(backend, cfg, s, dtype);
    } catch (err) {
      // A batch too large for memory must not strand the buffers allocated before the failing one.
      this.dispose();
      throw err;
    }
  }

  // Definite assignment: every field below is set by allocate(), called only from the constructor.
  private allocate(backend: Backend, cfg: TarFlowConfig, s: ModelShape, dtype: FloatDType): void {
    const batch = this.batch;
    const B = batch, T = s.tokens, D = s.patchDim, W = cfg.channels, H = s.heads, F = s.hidden;
    const t = (shape: number[], dt: FloatDType | 'int32' = dtype) => {
      const x = new backend.Tensor(dt, shape);
      this.tensors.push(x);
      return x;
    };
    this.x = t([B, cfg.inChannels, cfg.imgSize, cfg.imgSize]);
    this.labels = t([B], 'int32');
    this.patches = t([B, T, D]);
    const layerActs = () => {
      const layerInputs = [t([B, T, W])];
      const layers: LayerActs[] = [];
      for (let l = 0; l < cfg.layersPerBlock; l++) {
        layers.push({
          ln1: t([B, T, W]), mean1: t([B, T]), rstd1: t([B, T]), qkv: t([B, T, 3 * W]),
          attnSaved: t(this.fusedAttention ? [B, H, T] : [B, H, T, T]),
          att: t([B, T, W]), mid: t([B, T, W]), ln2: t([B, T, W]), mean2: t([B, T]), rstd2: t([B, T]),
          fc1: t([B, T, F]), act: t([B, T, F]),
        });
        layerInputs.push(t([B, T, W]));
      }
      return { layerInputs, layers };
    };
    const shared = this.recompute ? layerActs() : null;
    for (let k = 0; k < cfg.numBlocks; k++) {
      const flip = k % 2 === 1;
      const prevOut = k === 0 ? this.patches : this.blocks[k - 1].out;
      const { layerInputs, layers } = shared ?? layerActs();
      const v = t([B, T, D]);
      this.blocks.push({ orderedInput: flip ? t([B, T, D]) : prevOut, layerInputs, layers, couplingParams: t([B, T, s.outDim]), v, out: flip ? t([B, T, D]) : v });
      this.dIn.push(t([B, T, D]));
    }
    this.logdet = t([B]);
    this.sumsq = t([B]);
    this.dz = t([B, T, D]);
    this.dv = t([B, T, D]);
    this.dOrderedInput = t([B, T, D]);
    this.dout = t([B, T, s.outDim]);
    this.dh = t([B, T, W]);
    this.dln = t([B, T, W]);
    this.datt = t([B, T, W]);
    this.dqkv = t([B, T, 3 * W]);
    this.dact = t([B, T, F]);
    this.dx = t([B, cfg.inChannels, cfg.imgSize, cfg.imgSize]);
  }

  /** The latent z = f(x) after forward(). */
  get z(): Tensor {
    return this.blocks[this.blocks.length - 1].out;
  }

  dispose(): void {
    for (const t of this.tensors) t.dispose();
  }
}

export interface ForwardResult {
  /** Training loss 0.5*mean(z^2) - mean(logdet). */
  loss: number;
  /** Per-sample log-determinant (already divided by T*D). */
  logdet: Float64Array;
}

/** ModelOptions.recompute (and the training spec's): true, false or 'auto'. */
export function checkRecompute(value: unknown): boolean | 'auto' {
  if (value !== 'auto' && typeof value !== 'boolean') {
    throw validationError('ERR_TARFLOW_INVALID_ARGUMENT', 'recompute', "true, false or 'auto'", describeValue(value));
  }
  return value;
}

export class TarFlow {
  readonly config: TarFlowConfig;
  readonly shape: ModelShape;
  readonly backend: Backend;
  readonly dtype: FloatDType;
  readonly precision: Precision;
  private readonly matmul: MatmulOptions;
  readonly fusedAttention: boolean;
  readonly recompute: boolean | 'auto';
  readonly specs: ParamSpec[];
  readonly params: ParamSet;
  /** The VP prior's running variance (T, D); ones for NVP models. */
  readonly variance: Tensor;
  /**
   * How training mapped pixels p into the model's space: 'gaussian' (p/127.5 - 1, plus noise; the reference's) or
   * 'uniform' dequantization ((p + U)/128 - 1). Samples come back to bytes by the inverse of the same map. Set by
   * the Trainer and saved in checkpoints (metadata 'noise'); a model that says nothing is 'gaussian'.
   */
  trainingNoise: TrainingNoise = 'gaussian';
  /**
   * The class names by label when the training data named its classes (an image folder's class folders, CIFAR-10),
   * else null. Set by the Trainer, saved in checkpoints (metadata 'class_names'); evaluation and scoring match a
   * dataset's classes to them by name.
   */
  classNames: string[] | null = null;
  private workspaces = new Map<number, Workspace>();
  private warnedRecompute = false;
  private disposedFlag = false;

  constructor(config: Partial<TarFlowConfig>, options: ModelOptions = {}) {
    this.config = validateConfig(config);
    this.shape = modelShape(this.config);
    checkObject('options', options);
    checkKnownKeys('options', options, MODEL_OPTIONS);
    this.dtype = checkOneOf('dtype', options.dtype ?? 'float32', ['float32', 'float64']);
    this.precision = checkOneOf('precision', options.precision ?? 'fp32', PRECISIONS);
    if (this.precision === 'bf16' && this.dtype !== 'float32') {
      throw validationError('ERR_TARFLOW_INVALID_ARGUMENT', 'precision', "'fp32' with dtype 'float64'", "'bf16'", "bf16 mixed precision needs dtype 'float32'");
    }
    const seed = checkNumber('seed', options.seed ?? 0, SEED_RULE);
    const init = !optional(options.noInit, (v) => checkBoolean('noInit', v));
    this.backend = getBackend(options.device);
    this.specs = parameterLayout(this.config);
    this.matmul = { precision: this.precision };
    this.fusedAttention = optional(options.fusedAttention, (v) => checkBoolean('fusedAttention', v))
      ?? (this.backend.device === 'cuda' && this.dtype === 'float32' && this.config.headDim <= 64);
    this.recompute = checkRecompute(options.recompute ?? 'auto');
    this.params = new ParamSet(this.backend, this.config, this.specs, this.dtype);
    this.variance = new this.backend.Tensor(this.dtype, [this.shape.tokens, this.shape.patchDim]).fill(1);
    if (init) this.initialize(seed);
  }

  get disposed(): boolean {
    return this.disposedFlag;
  }

  get ops() {
    return this.backend.ops;
  }

  /** Number of trainable parameters. */
  get parameterCount(): number {
    return this.specs.reduce((a, s) => a + s.size, 0);
  }

  /** The reference initialisation, reproducible from `seed`: each parameter draws from its own stream. */
  initialize(seed: number): void {
    this.assertAlive();
    const scratchFor = (n: number) => new this.backend.Tensor(this.dtype, [n]);
    this.specs.forEach((s, i) => {
      const view = this.params.get(s.name);
      if (s.init.kind === 'const') {
        view.fill(s.init.value);
        return;
      }
      const scratch = scratchFor(s.size);
      if (s.init.kind === 'normal') {
        this.ops.normal(scratch, seed, STREAMS.paramInit + i, 0);
        this.ops.axpby(view, scratch, s.init.std, 0);
      } else {
        this.ops.uniform(scratch, seed, STREAMS.paramInit + i, 0);
        const u = scratch.toArray();
        const bound = s.init.bound;
        for (let j = 0; j < u.length; j++) u[j] = (2 * u[j] - 1) * bound;
        view.copyFrom(u);
      }
      scratch.dispose();
    });
    this.variance.fill(1);
  }

  /** The workspace for batch size B (allocated on first use, then reused). */
  workspace(batch: number): Workspace {
    this.assertAlive();
    checkNumber('batch', batch, { integer: true, min: 1 });
    let ws = this.workspaces.get(batch);
    if (!ws) {
      // Keep at most two: a full batch and the last, partial one (an epoch's tail, a scoring or generation run's
      // remainder); a third size frees both, so a caller cycling through sizes does not pile up activations.
      if (this.workspaces.size >= 2) this.releaseWorkspaces();
      ws = this.allocateWorkspace(batch);
      this.workspaces.set(batch, ws);
    }
    return ws;
  }

  private allocateWorkspace(batch: number): Workspace {
    const make = (recompute: boolean) => new Workspace(this.backend, this.config, this.shape, batch, this.dtype, this.fusedAttention, recompute);
    if (this.recompute !== 'auto') return make(this.recompute);
    try {
      return make(false);
    } catch (err) {
      if ((err as TarflowError).code !== 'ERR_TARFLOW_OUT_OF_MEMORY') throw err;
      const ws = make(true);
      if (!this.warnedRecompute && !process.env.TARFLOW_QUIET) {
        this.warnedRecompute = true;
        process.emitWarning(`tarflow: every block's activations at batch ${batch} did not fit (${(err as Error).message}); ` +
          'recomputing earlier blocks in the backward instead (the same results, for about one more forward pass per step; recompute: true skips this attempt)',
        { code: 'TARFLOW_RECOMPUTE' });
      }
      return ws;
    }
  }

  releaseWorkspaces(): void {
    for (const ws of this.workspaces.values()) ws.dispose();
    this.workspaces.clear();
  }

  /** Writes images (B*C*S*S floats in [-1,1]) and labels (-1 = dropped/none) into the workspace inputs. */
  setInputs(ws: Workspace, images: Float32Array | Float64Array, labels?: Int32Array | null): void {
    const expected = ws.x.size;
    const { inChannels: C, imgSize: S } = this.config;
    checkArray('images', images, [Float32Array, Float64Array]);
    checkLength('images', images, expected, `${ws.batch} x ${C} x ${S} x ${S} = ${expected} values (pixels scaled to [-1, 1])`);
    this.checkLabels(labels, ws.batch);
    for (let i = 0; i < images.length; i++) {
      if (!Number.isFinite(images[i])) {
        const per = expected / ws.batch;
        throw validationError('ERR_TARFLOW_DATA', `images[${i}]`, 'a finite value (pixels scaled to [-1, 1])', describeValue(images[i]), `value ${i % per} of image ${Math.floor(i / per)}`);
      }
    }
    const data = this.dtype === 'float32' ? (images instanceof Float32Array ? images : Float32Array.from(images)) : images instanceof Float64Array ? images : Float64Array.from(images);
    ws.x.copyFrom(data);
    this.setLabels(ws, labels);
  }

  setLabels(ws: Workspace, labels?: Int32Array | null): void {
    this.checkLabels(labels, ws.batch);
    if (this.config.numClasses === 0 || !labels) ws.labels.fill(-1);
    else ws.labels.copyFrom(labels);
  }

  /**
   * Checks the labels of a batch of `batch` images: an Int32Array of one class (or -1, none) per image, or
   * null/undefined for none at all. An unconditional model ignores their values.
   */
  checkLabels(labels: Int32Array | null | undefined, batch: number): void {
    if (labels === null || labels === undefined) return;
    checkArray('labels', labels, [Int32Array]);
    checkLength('labels', labels, batch, `${batch} labels (one per image)`);
    if (this.config.numClasses > 0) checkLabels('labels', labels, this.config.numClasses, true);
  }

  /** z = f(x) for the workspace inputs; saves the activations the backward needs. */
  forward(ws: Workspace): ForwardResult {
    this.assertAlive();
    const ops = this.ops;
    const cfg = this.config;
    ops.patchify(ws.patches, ws.x, cfg.patchSize);
    for (let k = 0; k < cfg.numBlocks; k++) {
      const a = ws.blocks[k];
      const flip = k % 2 === 1;
      const input = k === 0 ? ws.patches : ws.blocks[k - 1].out;
      if (flip) ops.flipTokens(a.orderedInput, input);
      this.blockLayersForward(ws, k);
      ops.couplingForward(a.v, ws.logdet, a.orderedInput, a.couplingParams, cfg.nvp, k > 0);
      if (flip) ops.flipTokens(a.out, a.v);
    }
    const B = ws.batch;
    const n = this.shape.tokens * this.shape.patchDim;
    const logdet = Float64Array.from(ws.logdet.toArray());
    const meanLogdet = logdet.reduce((x, y) => x + y, 0) / B;
    const loss = (0.5 * ops.sumSquares(ws.z)) / (B * n) - meanLogdet;
    return { loss, logdet };
  }

  /**
   * Block k's Transformer from its (token-ordered) input a.orderedInput to the coupling parameters
   * a.couplingParams, saving activations.
   */
  private blockLayersForward(ws: Workspace, k: number): void {
    const ops = this.ops;
    const mm = this.matmul;
    const cfg = this.config;
    const { heads } = this.shape;
    const labels = cfg.numClasses > 0 ? ws.labels : null;
    const p = this.params.blocks[k];
    const a = ws.blocks[k];
    const flip = k % 2 === 1;
    ops.linear(a.layerInputs[0], a.orderedInput, p.projInWeight, p.projInBias, false, mm);
    ops.addPosClass(a.layerInputs[0], p.pos, p.classEmbed, labels, flip);
    for (let l = 0; l < cfg.layersPerBlock; l++) {
      const w = p.layers[l];
      const s = a.layers[l];
      ops.layerNorm(s.ln1, s.mean1, s.rstd1, a.layerInputs[l], w.ln1Weight, w.ln1Bias, LN_EPS);
      ops.linear(s.qkv, s.ln1, w.qkvWeight, w.qkvBias, false, mm);
      if (ws.fusedAttention) ops.flashAttention(s.att, s.attnSaved, s.qkv, heads, 1, mm);
      else ops.attention(s.att, s.attnSaved, s.qkv, heads, 1, mm);
      ops.copy(s.mid, a.layerInputs[l]);
      ops.linear(s.mid, s.att, w.projWeight, w.projBias, true, mm);
      ops.layerNorm(s.ln2, s.mean2, s.rstd2, s.mid, w.ln2Weight, w.ln2Bias, LN_EPS);
      ops.linear(s.fc1, s.ln2, w.fc1Weight, w.fc1Bias, false, { ...mm, gelu: s.act });
      ops.copy(a.layerInputs[l + 1], s.mid);
      ops.linear(a.layerInputs[l + 1], s.act, w.fc2Weight, w.fc2Bias, true, mm);
    }
    ops.linear(a.couplingParams, a.layerInputs[cfg.layersPerBlock], p.projOutWeight, p.projOutBias, false, mm);
  }

  /**
   * Backward of the training loss through the last forward(): accumulates parameter gradients into `grads`
   * (when given) and leaves dLoss/dx in ws.dx. `grads` must be zeroed by the caller at the start of a step.
   * `lossPerImage` differentiates the sum of the images' losses instead of their mean (B times the gradient).
   */
  backward(ws: Workspace, grads: ParamSet | null, lossPerImage = false): void {
    this.assertAlive();
    const ops = this.ops;
    const mm = this.matmul;
    const cfg = this.config;
    const { heads, tokens, patchDim } = this.shape;
    // The batch mean scales every image's gradient by 1/B, and a factor that is not a power of two rounds
    // differently: with lossPerImage (each image's own loss, as denoising wants) an image's dLoss/dx is the same
    // bits whatever batch it is computed in.
    const B = lossPerImage ? 1 : ws.batch;
    const labels = cfg.numClasses > 0 ? ws.labels : null;
    ops.axpby(ws.dz, ws.z, 1 / (B * tokens * patchDim), 0);
    let dOut = ws.dz;
    for (let k = cfg.numBlocks - 1; k >= 0; k--) {
      const p = this.params.blocks[k];
      const g: BlockTensors | null = grads ? grads.blocks[k] : null;
      const a = ws.blocks[k];
      const flip = k % 2 === 1;
      // The shared layer activations hold the last block's; every earlier block's are made again from its input.
      if (ws.recompute && k < cfg.numBlocks - 1) this.blockLayersForward(ws, k);
      const dv = flip ? ws.dv : dOut;
      if (flip) ops.flipTokens(ws.dv, dOut);
      ops.couplingBackward(ws.dOrderedInput, ws.dout, dv, a.orderedInput, a.couplingParams, cfg.nvp, -1 / B);
      const L = cfg.layersPerBlock;
      ops.linearBackward(ws.dh, g?.projOutWeight ?? null, g?.projOutBias ?? null, ws.dout, a.layerInputs[L], p.projOutWeight, false, mm);
      for (let l = L - 1; l >= 0; l--) {
        const w = p.layers[l];
        const gw = g ? g.layers[l] : null;
        const s = a.layers[l];
        // dact is the gradient with respect to fc1's output: the GELU's derivative is applied in fc2's backward.
        ops.linearBackward(ws.dact, gw?.fc2Weight ?? null, gw?.fc2Bias ?? null, ws.dh, s.act, w.fc2Weight, false, { ...mm, geluInput: s.fc1 });
        ops.linearBackward(ws.dln, gw?.fc1Weight ?? null, gw?.fc1Bias ?? null, ws.dact, s.ln2, w.fc1Weight, false, mm);
        this.layerNormBackward(ws.dh, gw?.ln2Weight, gw?.ln2Bias, ws.dln, s.mid, s.mean2, s.rstd2, w.ln2Weight);
        ops.linearBackward(ws.datt, gw?.projWeight ?? null, gw?.projBias ?? null, ws.dh, s.att, w.projWeight, false, mm);
        if (ws.fusedAttention) ops.flashAttentionBackward(ws.dqkv, ws.datt, s.qkv, s.att, s.attnSaved, heads, 1, mm);
        else ops.attentionBackward(ws.dqkv, ws.datt, s.qkv, s.attnSaved, heads, 1, mm);
        ops.linearBackward(ws.dln, gw?.qkvWeight ?? null, gw?.qkvBias ?? null, ws.dqkv, s.ln1, w.qkvWeight, false, mm);
        this.layerNormBackward(ws.dh, gw?.ln1Weight, gw?.ln1Bias, ws.dln, a.layerInputs[l], s.mean1, s.rstd1, w.ln1Weight);
      }
      if (g) ops.addPosClassBackward(g.pos, g.classEmbed, ws.dh, labels, flip);
      ops.linearBackward(ws.dOrderedInput, g?.projInWeight ?? null, g?.projInBias ?? null, ws.dh, a.orderedInput, p.projInWeight, true, mm);
      const dIn = ws.dIn[k];
      if (flip) ops.flipTokens(dIn, ws.dOrderedInput);
      else ops.copy(dIn, ws.dOrderedInput);
      dOut = dIn;
    }
    ops.unpatchify(ws.dx, dOut, cfg.patchSize);
  }

  private scratchNorm?: { w: Tensor; b: Tensor };
  private layerNormBackward(dx: Tensor, dw: Tensor | undefined, db: Tensor | undefined, dy: Tensor, x: Tensor, mean: Tensor, rstd: Tensor, w: Tensor): void {
    // Without a gradient set (denoising needs only dL/dx) the weight gradients go to a throwaway buffer.
    if (!dw || !db) {
      if (!this.scratchNorm) {
        this.scratchNorm = { w: new this.backend.Tensor(this.dtype, [this.config.channels]), b: new this.backend.Tensor(this.dtype, [this.config.channels]) };
      }
      dw = this.scratchNorm.w;
      db = this.scratchNorm.b;
    }
    this.ops.layerNormBackward(dx, dw, db, dy, x, mean, rstd, w, true);
  }

  /** Per-image bits/dim of the workspace inputs (images dequantized by the caller), after forward(). */
  bitsPerDim(ws: Workspace, logdet: Float64Array): Float64Array {
    const n = this.shape.tokens * this.shape.patchDim;
    this.ops.rowSumSquares(ws.sumsq, ws.z);
    const ss = ws.sumsq.toArray();
    const out = new Float64Array(ws.batch);
    const c = 0.5 * Math.log(2 * Math.PI) + Math.log(128);
    for (let b = 0; b < ws.batch; b++) out[b] = (0.5 * ss[b] / n + c - logdet[b]) / Math.LN2;
    return out;
  }

  /**
   * The exact inverse: latents (B, T, D) -> images (B, C, S, S), written into `out`. `latents` is overwritten.
   * Multiplies by sqrt(var) first (the VP prior), then inverts blocks N-1..0 with guidance per the spec.
   */
  reverse(latents: Tensor, out: Tensor, labels: Tensor | null, options: ReverseOptions = {}): void {
    this.assertAlive();
    const cfg = this.config;
    const { guidance: w, guideWhat: what, attnTemp: tau, annealed } = resolveGuidance(options);
    const kvCache = checkOneOf('kvCache', options.kvCache ?? this.precision, PRECISIONS);
    if (kvCache === 'bf16' && this.dtype !== 'float32') {
      throw validationError('ERR_TARFLOW_INVALID_ARGUMENT', 'kvCache', "'fp32' with dtype 'float64'", "'bf16'", "a bf16 cache needs dtype 'float32'");
    }
    const v = this.variance.toArray();
    for (let i = 0; i < v.length; i++) v[i] = Math.sqrt(v[i]);
    const sqrtVar = new this.backend.Tensor(this.dtype, this.variance.shape, v);
    try {
      this.ops.mulBroadcast(latents, sqrtVar);
    } finally {
      sqrtVar.dispose();
    }
    for (let k = cfg.numBlocks - 1; k >= 0; k--) {
      this.ops.blockReverse(latents, this.params.blocks[k], {
        flip: k % 2 === 1, nvp: cfg.nvp, heads: this.shape.heads, labels: cfg.numClasses > 0 ? labels : null,
        guidance: w, guideA: what.includes('a'), guideB: what.includes('b'), annealed,
        tempUncond: tau, eps: LN_EPS, precision: this.precision, kvCache,
      });
    }
    this.ops.unpatchify(out, latents, cfg.patchSize);
  }

  /** Throws ERR_TARFLOW_DISPOSED once the model is disposed: callers that hold it check before allocating for it. */
  assertAlive(): void {
    if (this.disposedFlag) throw new TarflowError('ERR_TARFLOW_DISPOSED', 'this model was disposed; create or load a new one');
  }

  dispose(): void {
    if (this.disposedFlag) return;
    this.releaseWorkspaces();
    this.scratchNorm?.w.dispose();
    this.scratchNorm?.b.dispose();
    this.params.dispose();
    this.variance.dispose();
    this.disposedFlag = true;
  }
}

/**
 * A model argument, checked before anything reads its config: a stray value (null, a model's name, a plain
 * object) would otherwise fail as a TypeError deep inside the call.
 */
export function checkModel(value: unknown): TarFlow {
  if (!(value instanceof TarFlow)) {
    // Its tensors belong to the other copy's native addon, which this copy's ops cannot read: refused, with the cause.
    if (typeof value === 'object' && value !== null && value.constructor?.name === 'TarFlow') {
      throw new TarflowError('ERR_TARFLOW_INVALID_ARGUMENT', 'model: this TarFlow was made by another copy of the tarflow package ' +
        '(two versions installed side by side?); load or create it with the same tarflow import that you pass it to (npm ls tarflow shows the copies)');
    }
    throw validationError('ERR_TARFLOW_INVALID_ARGUMENT', 'model', 'a TarFlow model (new TarFlow(config) or await loadModel(path or name))', describeValue(value));
  }
  return value;
}
