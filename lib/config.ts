/**
 * Model configuration: the reference implementation's hyper-parameters, validated, plus the size presets.
 * In checkpoints the configuration is stored with the reference's snake_case names (toReferenceConfig).
 */
import { checkBoolean, checkKnownKeys, checkNumber, checkObject, describeValue, validationError, type OptionNames } from './validate.js';

/** The most classes a model may have: a larger label is a stray value (an 'ignore' marker), not a class. */
export const MAX_CLASSES = 100_000;

export interface TarFlowConfig {
  /** Image channels C (1 grey, 3 RGB). */
  inChannels: number;
  /** Image side S (images are S x S). */
  imgSize: number;
  /** Patch side P; must divide imgSize. */
  patchSize: number;
  /** Transformer width W; a multiple of headDim. */
  channels: number;
  /** Number of flow blocks N. */
  numBlocks: number;
  /** Transformer layers K per block. */
  layersPerBlock: number;
  /** true: affine (NVP) coupling; false: volume preserving (shift only). */
  nvp: boolean;
  /** 0 for an unconditional model. */
  numClasses: number;
  headDim: number;
  expansion: number;
}

/** The reference's JSON names, as stored in safetensors metadata under "config". */
export interface ReferenceConfig {
  in_channels: number;
  img_size: number;
  patch_size: number;
  channels: number;
  num_blocks: number;
  layers_per_block: number;
  nvp: boolean;
  num_classes: number;
  head_dim?: number;
  expansion?: number;
}

export interface ModelShape {
  /** Patches per image. */
  tokens: number;
  /** Values per patch (C*P*P). */
  patchDim: number;
  heads: number;
  /** Outputs of proj_out per token: 2D (NVP) or D (VP). */
  outDim: number;
  hidden: number;
}

/** Layers (numBlocks x layersPerBlock) a model may have: far beyond published models, small enough to lay out. */
const MAX_LAYERS = 4096;
/** The native tensor limit: the parameters live in one tensor. */
const MAX_PARAMETERS = 2 ** 40;

const CONFIG_FIELDS = {
  inChannels: 'in_channels', imgSize: 'img_size', patchSize: 'patch_size', channels: 'channels', numBlocks: 'num_blocks',
  layersPerBlock: 'layers_per_block', nvp: 'nvp', numClasses: 'num_classes', headDim: 'head_dim', expansion: 'expansion',
} as const satisfies Record<keyof TarFlowConfig, keyof ReferenceConfig>;
const CONFIG_KEYS = Object.fromEntries(Object.keys(CONFIG_FIELDS).map((k) => [k, true])) as OptionNames<TarFlowConfig>;
type FieldName = (field: keyof TarFlowConfig) => string;

const camelName: FieldName = (field) => `config.${field}`;
const referenceName: FieldName = (field) => `config.${CONFIG_FIELDS[field]}`;

/** Parameters of the model parameterLayout builds (its alignment padding aside). */
function parameterCount(cfg: TarFlowConfig): number {
  const { tokens, patchDim, outDim, hidden } = modelShape(cfg);
  const W = cfg.channels;
  const layer = 4 * W + (3 * W * W + 3 * W) + (W * W + W) + (hidden * W + hidden) + (W * hidden + W);
  const block = (W * patchDim + W) + tokens * W + cfg.numClasses * W + cfg.layersPerBlock * layer + (outDim * W + outDim);
  return cfg.numBlocks * block;
}

function checkFields(c: Record<string, unknown>, name: FieldName): TarFlowConfig {
  const size = (field: keyof TarFlowConfig, value: unknown) => checkNumber(name(field), value, { integer: true, min: 1 }, 'ERR_TARFLOW_CONFIG');
  const cfg: TarFlowConfig = {
    inChannels: size('inChannels', c.inChannels),
    imgSize: size('imgSize', c.imgSize),
    patchSize: size('patchSize', c.patchSize),
    channels: size('channels', c.channels),
    numBlocks: size('numBlocks', c.numBlocks),
    layersPerBlock: size('layersPerBlock', c.layersPerBlock),
    nvp: checkBoolean(name('nvp'), c.nvp ?? true, 'ERR_TARFLOW_CONFIG'),
    numClasses: checkNumber(name('numClasses'), c.numClasses ?? 0, { integer: true, min: 0, max: MAX_CLASSES }, 'ERR_TARFLOW_CONFIG'),
    headDim: size('headDim', c.headDim === undefined ? 64 : c.headDim),
    expansion: size('expansion', c.expansion === undefined ? 4 : c.expansion),
  };
  const fail = (field: keyof TarFlowConfig, expected: string, hint?: string) =>
    validationError('ERR_TARFLOW_CONFIG', name(field), expected, describeValue(cfg[field]), hint);
  if (cfg.imgSize % cfg.patchSize !== 0) throw fail('patchSize', `a divisor of ${name('imgSize')} (${cfg.imgSize})`);
  if (cfg.channels % cfg.headDim !== 0) throw fail('channels', `a multiple of ${name('headDim')} (${cfg.headDim})`);
  if ((cfg.imgSize / cfg.patchSize) ** 2 < 2) throw fail('patchSize', `less than ${name('imgSize')} (${cfg.imgSize})`, 'the image must have at least 2 patches');
  if (cfg.numBlocks > MAX_LAYERS) throw fail('numBlocks', `at most ${MAX_LAYERS}`);
  const layersPerBlock = Math.floor(MAX_LAYERS / cfg.numBlocks);
  if (cfg.layersPerBlock > layersPerBlock) {
    throw fail('layersPerBlock', `at most ${layersPerBlock} with ${cfg.numBlocks} blocks (${MAX_LAYERS} layers in all)`);
  }
  const parameters = parameterCount(cfg);
  if (parameters > MAX_PARAMETERS) {
    throw validationError('ERR_TARFLOW_CONFIG', 'config', 'a model of at most 2^40 parameters (the largest tensor)', `${parameters.toPrecision(3)} parameters`);
  }
  return cfg;
}

/** Fills defaults and checks every constraint, with a message that says which field and why. */
export function validateConfig(c: Partial<TarFlowConfig>): TarFlowConfig {
  const o = checkObject('config', c, 'ERR_TARFLOW_CONFIG');
  // A misspelt field (numclasses) would silently take its default: an unconditional model.
  checkKnownKeys('config', o, CONFIG_KEYS, 'ERR_TARFLOW_CONFIG');
  return checkFields(o, camelName);
}

export function modelShape(cfg: TarFlowConfig): ModelShape {
  const patchDim = cfg.inChannels * cfg.patchSize * cfg.patchSize;
  return {
    tokens: (cfg.imgSize / cfg.patchSize) ** 2,
    patchDim,
    heads: cfg.channels / cfg.headDim,
    outDim: cfg.nvp ? 2 * patchDim : patchDim,
    hidden: cfg.channels * cfg.expansion,
  };
}

export function toReferenceConfig(cfg: TarFlowConfig): ReferenceConfig {
  return {
    in_channels: cfg.inChannels,
    img_size: cfg.imgSize,
    patch_size: cfg.patchSize,
    channels: cfg.channels,
    num_blocks: cfg.numBlocks,
    layers_per_block: cfg.layersPerBlock,
    nvp: cfg.nvp,
    num_classes: cfg.numClasses,
    head_dim: cfg.headDim,
    expansion: cfg.expansion,
  };
}

/**
 * Accepts the reference's snake_case object (or this library's camelCase one), from a config file or checkpoint
 * metadata: any field beyond the known ones is refused, since a misspelt one would silently take its default.
 */
export function fromReferenceConfig(r: unknown): TarFlowConfig {
  const o = checkObject('config', r, 'ERR_TARFLOW_CONFIG');
  const camel = Object.hasOwn(o, 'inChannels');
  const known: readonly string[] = camel ? Object.keys(CONFIG_FIELDS) : Object.values(CONFIG_FIELDS);
  for (const k of Object.keys(o)) {
    if (!known.includes(k)) throw validationError('ERR_TARFLOW_CONFIG', 'config', `only the fields ${known.join(', ')}`, `the field ${describeValue(k)}`);
  }
  if (camel) return checkFields(o, camelName);
  const fields = Object.fromEntries(Object.entries(CONFIG_FIELDS).map(([field, ref]) => [field, o[ref]]));
  return checkFields(fields, referenceName);
}

/** Size presets for 28x28 grey digits (MNIST). `small` is the reference MNIST setting. */
export const PRESETS = {
  tiny: { patchSize: 4, channels: 64, numBlocks: 4, layersPerBlock: 1 },
  small: { patchSize: 4, channels: 128, numBlocks: 4, layersPerBlock: 4 },
} as const;
export type PresetName = keyof typeof PRESETS;
