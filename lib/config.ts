/**
 * Model configuration: the reference implementation's hyper-parameters, validated, plus the size presets.
 * In checkpoints the configuration is stored with the reference's snake_case names (toReferenceConfig).
 */
import { TarflowError } from './errors.js';

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

function positiveInt(v: unknown, name: string): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 1) {
    throw new TarflowError('ERR_TARFLOW_CONFIG', `config.${name} must be a positive integer, got ${JSON.stringify(v)}`);
  }
  return v;
}

/** Fills defaults and checks every constraint, with a message that says which field and why. */
export function validateConfig(c: Partial<TarFlowConfig>): TarFlowConfig {
  if (!c || typeof c !== 'object') throw new TarflowError('ERR_TARFLOW_CONFIG', 'config must be an object');
  const cfg: TarFlowConfig = {
    inChannels: positiveInt(c.inChannels, 'inChannels'),
    imgSize: positiveInt(c.imgSize, 'imgSize'),
    patchSize: positiveInt(c.patchSize, 'patchSize'),
    channels: positiveInt(c.channels, 'channels'),
    numBlocks: positiveInt(c.numBlocks, 'numBlocks'),
    layersPerBlock: positiveInt(c.layersPerBlock, 'layersPerBlock'),
    nvp: c.nvp ?? true,
    numClasses: c.numClasses ?? 0,
    headDim: c.headDim === undefined ? 64 : positiveInt(c.headDim, 'headDim'),
    expansion: c.expansion === undefined ? 4 : positiveInt(c.expansion, 'expansion'),
  };
  if (typeof cfg.nvp !== 'boolean') throw new TarflowError('ERR_TARFLOW_CONFIG', `config.nvp must be a boolean, got ${JSON.stringify(cfg.nvp)}`);
  if (!Number.isInteger(cfg.numClasses) || cfg.numClasses < 0) {
    throw new TarflowError('ERR_TARFLOW_CONFIG', `config.numClasses must be 0 (unconditional) or a positive integer, got ${JSON.stringify(cfg.numClasses)}`);
  }
  if (cfg.imgSize % cfg.patchSize !== 0) {
    throw new TarflowError('ERR_TARFLOW_CONFIG', `config.patchSize ${cfg.patchSize} must divide config.imgSize ${cfg.imgSize}`);
  }
  if (cfg.channels % cfg.headDim !== 0) {
    throw new TarflowError('ERR_TARFLOW_CONFIG', `config.channels ${cfg.channels} must be a multiple of headDim ${cfg.headDim}`);
  }
  if ((cfg.imgSize / cfg.patchSize) ** 2 < 2) {
    throw new TarflowError('ERR_TARFLOW_CONFIG', `the image must have at least 2 patches; use a patchSize smaller than ${cfg.imgSize}`);
  }
  return cfg;
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

/** Accepts the reference's snake_case object (or this library's camelCase one). */
export function fromReferenceConfig(r: unknown): TarFlowConfig {
  if (!r || typeof r !== 'object' || Array.isArray(r)) throw new TarflowError('ERR_TARFLOW_CONFIG', 'the model config must be a JSON object');
  const o = r as Record<string, unknown>;
  if ('inChannels' in o) return validateConfig(o as Partial<TarFlowConfig>);
  const known = ['in_channels', 'img_size', 'patch_size', 'channels', 'num_blocks', 'layers_per_block', 'nvp', 'num_classes', 'head_dim', 'expansion'];
  for (const k of Object.keys(o)) {
    if (!known.includes(k)) throw new TarflowError('ERR_TARFLOW_CONFIG', `unknown config field '${k}'; expected some of ${known.join(', ')}`);
  }
  return validateConfig({
    inChannels: o.in_channels as number,
    imgSize: o.img_size as number,
    patchSize: o.patch_size as number,
    channels: o.channels as number,
    numBlocks: o.num_blocks as number,
    layersPerBlock: o.layers_per_block as number,
    nvp: o.nvp as boolean | undefined,
    numClasses: o.num_classes as number | undefined,
    headDim: o.head_dim as number | undefined,
    expansion: o.expansion as number | undefined,
  });
}

/** Size presets for 28x28 grey digits (MNIST). `small` is the reference MNIST setting. */
export const PRESETS = {
  tiny: { patchSize: 4, channels: 64, numBlocks: 4, layersPerBlock: 1 },
  small: { patchSize: 4, channels: 128, numBlocks: 4, layersPerBlock: 4 },
} as const;
export type PresetName = keyof typeof PRESETS;
