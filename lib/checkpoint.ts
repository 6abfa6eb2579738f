/**
 * Checkpoints: safetensors files whose tensor names are the reference PyTorch state_dict (so they load there with
 * load_state_dict, and converted reference checkpoints load here), with the model config in the metadata.
 */
import { existsSync } from 'node:fs';
import { fromReferenceConfig, modelShape, toReferenceConfig, type TarFlowConfig } from './config.js';
import { parameterLayout, type ParamSpec } from './params.js';
import { TarflowError } from './errors.js';
import { MODEL_OPTIONS, TarFlow, checkModel, type ModelOptions } from './model.js';
import { PRETRAINED, pretrainedPath, shippedModel } from './pretrained.js';
import { checkKnownKeys, checkObject, checkOneOf, describeValue, isClassNameList, parseJson, validationError, optionNames, type OptionNames } from './validate.js';
import {
  bf16Tensor, f32Tensor, readSafetensors, toFloat32, toFloat64, writeSafetensors,
  type SafetensorsFile, type SafetensorsTensor,
} from './safetensors.js';

export interface SaveOptions {
  /** Storage precision of the weights: 'F32' (default) or 'BF16' (half the size; for sampling models). */
  dtype?: 'F32' | 'BF16';
  /**
   * Extra metadata entries (strings). Not config, format, noise or class_names: those are written from the model
   * (model.trainingNoise, model.classNames), and one given here is refused.
   */
  metadata?: Record<string, string>;
}

function hostFloat32(a: Float32Array | Float64Array | Int32Array): Float32Array {
  return a instanceof Float32Array ? a : Float32Array.from(a);
}

/** The reference state_dict of a model: parameters, the `var` buffer and each block's `attn_mask`. */
export function stateDict(model: TarFlow, dtype: 'F32' | 'BF16' = 'F32'): Map<string, SafetensorsTensor> {
  checkModel(model).assertAlive();
  const out = new Map<string, SafetensorsTensor>();
  const make = (data: Float32Array, shape: number[]) => (dtype === 'BF16' ? bf16Tensor(data, shape) : f32Tensor(data, shape));
  const flat = hostFloat32(model.params.flat.toArray());
  for (const s of model.specs) out.set(s.name, make(flat.slice(s.offset, s.offset + s.size), s.shape));
  const { tokens, patchDim } = model.shape;
  // var stays float32 even in bf16 files: it scales every latent at sampling time.
  out.set('var', f32Tensor(hostFloat32(model.variance.toArray()), [tokens, patchDim]));
  const mask = new Float32Array(tokens * tokens);
  for (let i = 0; i < tokens; i++) for (let j = 0; j <= i; j++) mask[i * tokens + j] = 1;
  for (let k = 0; k < model.config.numBlocks; k++) out.set(`blocks.${k}.attn_mask`, make(mask, [tokens, tokens]));
  return out;
}

/** What keeps a state_dict from fitting a model of `config` (names and shapes), each named; empty when it fits. */
function stateDictMismatches(config: TarFlowConfig, specs: readonly ParamSpec[], tensors: Map<string, SafetensorsTensor>, prefix: string): string[] {
  const expected = new Map(specs.map((s) => [s.name, s]));
  const { tokens, patchDim } = modelShape(config);
  const problems: string[] = [];
  const seen = new Set<string>();
  for (const [fullName, t] of tensors) {
    if (!fullName.startsWith(prefix)) continue;
    const name = fullName.slice(prefix.length);
    if (/^blocks\.\d+\.attn_mask$/.test(name)) continue;
    if (name === 'var') {
      if (t.shape.length !== 2 || t.shape[0] !== tokens || t.shape[1] !== patchDim) problems.push(`'var' has shape [${t.shape}] but the config needs [${tokens}, ${patchDim}]`);
      continue;
    }
    const spec = expected.get(name);
    if (!spec) {
      problems.push(`unexpected tensor '${name}'`);
      continue;
    }
    seen.add(name);
    if (t.shape.length !== spec.shape.length || t.shape.some((d, i) => d !== spec.shape[i])) {
      problems.push(`'${name}' has shape [${t.shape}] but the config needs [${spec.shape}]`);
    }
  }
  for (const name of expected.keys()) if (!seen.has(name)) problems.push(`missing tensor '${name}'`);
  return problems;
}

function mismatchError(source: string, problems: readonly string[]): TarflowError {
  const shown = problems.slice(0, 8).join('; ') + (problems.length > 8 ? `; and ${problems.length - 8} more` : '');
  return new TarflowError('ERR_TARFLOW_CHECKPOINT', `${source} does not match the model config: ${shown}. Check that the config (config, or the --config file) is the one the checkpoint was trained with.`);
}

/**
 * Copies a state_dict (names after `prefix`) into the model. Every parameter must be present with its exact
 * shape; `attn_mask` buffers are accepted and ignored; anything else is an error that names it.
 */
export function loadStateDict(model: TarFlow, tensors: Map<string, SafetensorsTensor>, prefix = '', source = 'checkpoint'): void {
  checkModel(model).assertAlive();
  const mismatches = stateDictMismatches(model.config, model.specs, tensors, prefix);
  if (mismatches.length) throw mismatchError(source, mismatches);
  const expected = new Map(model.specs.map((s) => [s.name, s]));
  const host = model.dtype === 'float64' ? new Float64Array(model.params.flat.size) : new Float32Array(model.params.flat.size);
  const problems: string[] = [];
  let variance: Float32Array | Float64Array | null = null;
  const convert = (x: SafetensorsTensor) => (model.dtype === 'float64' ? toFloat64(x) : toFloat32(x));
  for (const [fullName, t] of tensors) {
    if (!fullName.startsWith(prefix)) continue;
    const name = fullName.slice(prefix.length);
    const spec = expected.get(name);
    if (name !== 'var' && !spec) continue; // an attn_mask
    try {
      if (spec) host.set(convert(t), spec.offset);
      else variance = convert(t);
    } catch (err) {
      problems.push(`'${name}': ${(err as Error).message}`);
    }
  }
  if (problems.length) throw mismatchError(source, problems);
  model.params.flat.copyFrom(host);
  if (variance) model.variance.copyFrom(variance);
  else model.variance.fill(1);
}

const RESERVED_METADATA = ['config', 'format', 'noise', 'class_names'];

/** Writes the model as a reference-compatible safetensors checkpoint, atomically. */
export async function saveModel(path: string, model: TarFlow, options: SaveOptions = {}): Promise<void> {
  checkObject('options', options);
  checkKnownKeys('options', options, { dtype: true, metadata: true } satisfies OptionNames<SaveOptions>);
  checkModel(model).assertAlive();
  // Checked as loadModel reads them back (classNamesFromMetadata): the field is the caller's to set.
  const names = model.classNames;
  if (names !== null && !isClassNameList(names, model.config.numClasses)) {
    throw validationError('ERR_TARFLOW_INVALID_ARGUMENT', 'model.classNames', `a list of ${model.config.numClasses} distinct names (one per class of the model) or null`, describeValue(names));
  }
  // The entries loadModel reads come from the model: one given here would replace them, and a wrong one would leave a
  // file that does not load (or loads as another model).
  const reserved = Object.keys(options.metadata ?? {}).find((k) => RESERVED_METADATA.includes(k));
  if (reserved !== undefined) {
    throw validationError('ERR_TARFLOW_INVALID_ARGUMENT', `options.metadata.${reserved}`, `an entry other than ${RESERVED_METADATA.join(', ')} (written from the model)`,
      describeValue(options.metadata![reserved]), 'set model.classNames or model.trainingNoise instead, or leave the entry out');
  }
  const metadata: Record<string, string> = {
    config: JSON.stringify(toReferenceConfig(model.config)),
    format: 'tarflow',
    ...(model.trainingNoise === 'gaussian' ? {} : { noise: model.trainingNoise }),
    ...(model.classNames ? { class_names: JSON.stringify(model.classNames) } : {}),
    ...options.metadata,
  };
  await writeSafetensors(path, stateDict(model, checkOneOf('dtype', options.dtype ?? 'F32', ['F32', 'BF16'] as const)), metadata);
}

/** The config stored in a checkpoint's metadata, or null when it has none. */
export function configFromMetadata(file: SafetensorsFile, source: string): TarFlowConfig | null {
  const raw = file.metadata.config;
  if (raw === undefined) return null;
  return fromReferenceConfig(parseJson(`${source}: metadata 'config'`, raw, 'ERR_TARFLOW_CHECKPOINT'));
}

export interface LoadOptions extends ModelOptions {
  /** Config for checkpoints without metadata (for example converted from the reference PyTorch code). */
  config?: Partial<TarFlowConfig> | Record<string, unknown>;
}

const LOAD_OPTIONS = optionNames<LoadOptions>()({ ...MODEL_OPTIONS, config: true });

/**
 * Loads a checkpoint into a new model: a .safetensors path, or the name of a model shipped in the package
 * ('mnist-cond', 'mnist-bpd': see PRETRAINED), as the command line's --checkpoint takes. A `.pth`/`.pt` pickle is
 * refused: loading one could execute code.
 */
export async function loadModel(checkpoint: string, options: LoadOptions = {}): Promise<TarFlow> {
  if (typeof checkpoint !== 'string') {
    throw validationError('ERR_TARFLOW_INVALID_ARGUMENT', 'checkpoint', `a .safetensors file or the name of a shipped model (${Object.keys(PRETRAINED).join(', ')})`, describeValue(checkpoint));
  }
  const path = shippedModel(checkpoint) ? pretrainedPath(checkpoint) : checkpoint;
  if (/\.(pth|pt|ckpt|pkl|bin)$/i.test(path)) {
    throw new TarflowError('ERR_TARFLOW_CHECKPOINT',
      `${path} looks like a pickled PyTorch file, which tarflow never loads (unpickling can run code). Convert it in Python: ` +
      `from safetensors.torch import save_file; save_file(torch.load(p, map_location='cpu'), 'model.safetensors'), then pass the model's config JSON (config, --config).`);
  }
  checkObject('options', options);
  checkKnownKeys('options', options, LOAD_OPTIONS);
  const { config: givenConfig, ...modelOptions } = options;
  const given = givenConfig ? fromReferenceConfig(givenConfig) : null;
  if (!/[\\/.]/.test(checkpoint) && !existsSync(path)) {
    // A bare word is more likely a misspelt model name than a file without an extension.
    throw validationError('ERR_TARFLOW_INVALID_ARGUMENT', 'checkpoint', `a .safetensors file or the name of a shipped model (${Object.keys(PRETRAINED).join(', ')})`,
      `${describeValue(checkpoint)}, which is neither`);
  }
  const file = await readSafetensors(path);
  if (file.metadata.format === 'tarflow-train-state') {
    throw new TarflowError('ERR_TARFLOW_CHECKPOINT', `${path} is a training state (the optimizer's moments and counters), not a model checkpoint; ` +
      `load the checkpoint.safetensors saved beside it`);
  }
  const config = given ?? configFromMetadata(file, path);
  if (!config) {
    throw new TarflowError('ERR_TARFLOW_CHECKPOINT',
      `${path} has no config in its metadata; pass the model config (a JSON object with in_channels, img_size, patch_size, channels, num_blocks, layers_per_block, nvp, num_classes)`);
  }
  const noise = file.metadata.noise;
  if (noise !== undefined && noise !== 'gaussian' && noise !== 'uniform') {
    throw validationError('ERR_TARFLOW_CHECKPOINT', `${path}: metadata 'noise'`, "'gaussian' or 'uniform'", describeValue(noise));
  }
  const classNames = classNamesFromMetadata(file, path, config.numClasses);
  // Before anything is allocated: the config comes from the file too, and may claim a model far larger than it.
  const mismatches = stateDictMismatches(config, parameterLayout(config), file.tensors, '');
  if (mismatches.length) throw mismatchError(path, mismatches);
  const model = new TarFlow(config, { ...modelOptions, noInit: true });
  model.trainingNoise = noise ?? 'gaussian';
  model.classNames = classNames;
  try {
    loadStateDict(model, file.tensors, '', path);
  } catch (err) {
    model.dispose();
    throw err;
  }
  return model;
}

/** The class names a checkpoint records (metadata 'class_names': a JSON list, one distinct name per class), or null. */
export function classNamesFromMetadata(file: SafetensorsFile, path: string, numClasses: number): string[] | null {
  const raw = file.metadata.class_names;
  if (raw === undefined) return null;
  const names = parseJson(`${path}: metadata 'class_names'`, raw, 'ERR_TARFLOW_CHECKPOINT');
  if (!isClassNameList(names, numClasses)) {
    throw validationError('ERR_TARFLOW_CHECKPOINT', `${path}: metadata 'class_names'`, `a list of ${numClasses} distinct names (one per class of the model)`, describeValue(names),
      'remove the entry or correct it');
  }
  return names;
}

