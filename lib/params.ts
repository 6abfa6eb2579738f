/**
 * Parameter layout. All parameters live in one contiguous native buffer (so AdamW is one pass, clipping one
 * reduction and a checkpoint one copy); each named tensor is a view into it. Names and shapes are the reference
 * PyTorch module's state_dict, so checkpoints move both ways. Gradients and optimizer moments use the same layout.
 */
import type { Backend, FloatDType, Tensor } from './backend.js';
import type { TarFlowConfig } from './config.js';
import { modelShape } from './config.js';

export type ParamInit = { kind: 'uniform'; bound: number } | { kind: 'normal'; std: number } | { kind: 'const'; value: number };

export interface ParamSpec {
  name: string;
  shape: number[];
  offset: number;
  size: number;
  init: ParamInit;
}

export interface LayerTensors {
  ln1Weight: Tensor; ln1Bias: Tensor; qkvWeight: Tensor; qkvBias: Tensor; projWeight: Tensor; projBias: Tensor;
  ln2Weight: Tensor; ln2Bias: Tensor; fc1Weight: Tensor; fc1Bias: Tensor; fc2Weight: Tensor; fc2Bias: Tensor;
}

export interface BlockTensors {
  projInWeight: Tensor;
  projInBias: Tensor;
  pos: Tensor;
  classEmbed: Tensor | null;
  layers: LayerTensors[];
  projOutWeight: Tensor;
  projOutBias: Tensor;
}

/** The reference's state_dict entries (parameters only; the buffers var and attn_mask are handled apart). */
export function parameterLayout(cfg: TarFlowConfig): ParamSpec[] {
  const { tokens, patchDim, outDim, hidden } = modelShape(cfg);
  const W = cfg.channels;
  const specs: ParamSpec[] = [];
  let offset = 0;
  const add = (name: string, shape: number[], init: ParamInit) => {
    const size = shape.reduce((a, b) => a * b, 1);
    // Keep every tensor 16-element aligned so vector loads on a view stay aligned.
    specs.push({ name, shape, offset, size, init });
    offset += Math.ceil(size / 16) * 16;
  };
  const linear = (prefix: string, out: number, inp: number, zeroWeight = false) => {
    const bound = 1 / Math.sqrt(inp);
    add(`${prefix}.weight`, [out, inp], zeroWeight ? { kind: 'const', value: 0 } : { kind: 'uniform', bound });
    add(`${prefix}.bias`, [out], { kind: 'uniform', bound });
  };
  const norm = (prefix: string) => {
    add(`${prefix}.weight`, [W], { kind: 'const', value: 1 });
    add(`${prefix}.bias`, [W], { kind: 'const', value: 0 });
  };
  for (let k = 0; k < cfg.numBlocks; k++) {
    const b = `blocks.${k}`;
    linear(`${b}.proj_in`, W, patchDim);
    add(`${b}.pos_embed`, [tokens, W], { kind: 'normal', std: 0.01 });
    if (cfg.numClasses > 0) add(`${b}.class_embed`, [cfg.numClasses, 1, W], { kind: 'normal', std: 0.01 });
    for (let l = 0; l < cfg.layersPerBlock; l++) {
      const a = `${b}.attn_blocks.${l}`;
      norm(`${a}.attention.norm`);
      linear(`${a}.attention.qkv`, 3 * W, W);
      linear(`${a}.attention.proj`, W, W);
      norm(`${a}.mlp.norm`);
      linear(`${a}.mlp.main.0`, hidden, W);
      linear(`${a}.mlp.main.2`, W, hidden);
    }
    linear(`${b}.proj_out`, outDim, W, true);
  }
  return specs;
}

export function layoutSize(specs: ParamSpec[]): number {
  const last = specs[specs.length - 1];
  return last ? Math.ceil((last.offset + last.size) / 16) * 16 : 0;
}

/** One flat buffer with a named view per parameter. */
export class ParamSet {
  readonly flat: Tensor;
  readonly views = new Map<string, Tensor>();
  readonly blocks: BlockTensors[];

  constructor(backend: Backend, readonly cfg: TarFlowConfig, readonly specs: ParamSpec[], dtype: FloatDType) {
    this.flat = new backend.Tensor(dtype, [layoutSize(specs)]);
    for (const s of specs) this.views.set(s.name, this.flat.view(s.offset, s.shape));
    const v = (name: string) => this.views.get(name)!;
    this.blocks = [];
    for (let k = 0; k < cfg.numBlocks; k++) {
      const b = `blocks.${k}`;
      const layers: LayerTensors[] = [];
      for (let l = 0; l < cfg.layersPerBlock; l++) {
        const a = `${b}.attn_blocks.${l}`;
        layers.push({
          ln1Weight: v(`${a}.attention.norm.weight`), ln1Bias: v(`${a}.attention.norm.bias`),
          qkvWeight: v(`${a}.attention.qkv.weight`), qkvBias: v(`${a}.attention.qkv.bias`),
          projWeight: v(`${a}.attention.proj.weight`), projBias: v(`${a}.attention.proj.bias`),
          ln2Weight: v(`${a}.mlp.norm.weight`), ln2Bias: v(`${a}.mlp.norm.bias`),
          fc1Weight: v(`${a}.mlp.main.0.weight`), fc1Bias: v(`${a}.mlp.main.0.bias`),
          fc2Weight: v(`${a}.mlp.main.2.weight`), fc2Bias: v(`${a}.mlp.main.2.bias`),
        });
      }
      this.blocks.push({
        projInWeight: v(`${b}.proj_in.weight`), projInBias: v(`${b}.proj_in.bias`), pos: v(`${b}.pos_embed`),
        classEmbed: cfg.numClasses > 0 ? v(`${b}.class_embed`) : null, layers,
        projOutWeight: v(`${b}.proj_out.weight`), projOutBias: v(`${b}.proj_out.bias`),
      });
    }
  }

  get(name: string): Tensor {
    const t = this.views.get(name);
    if (!t) throw new Error(`no parameter named ${name}`);
    return t;
  }

  dispose(): void {
    for (const t of this.views.values()) t.dispose();
    this.flat.dispose();
  }
}
