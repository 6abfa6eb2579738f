/**
 * The whole-step rows of `npm run bench`: training images/s (--only train, and the models --only profile times)
 * and sampling time (--only sample). Each returns its row and the line printed from it, so that the tests can run one row.
 */
import type { Backend, Precision } from '../lib/backend.js';
import { loadModel } from '../lib/checkpoint.js';
import { PRESETS } from '../lib/config.js';
import { loadMnist } from '../lib/data.js';
import { TarFlow } from '../lib/model.js';
import { pretrainedPath, shippedModel } from '../lib/pretrained.js';
import { defaultTemperature, generate } from '../lib/sampling.js';
import { Trainer } from '../lib/train.js';
import { median } from './kernels.js';
import type { BenchRow, Measured } from './report.js';

/** The shipped likelihood model's shape (models/mnist-bpd): patch 2, so 196 tokens, trained at batch 64. */
export const BPD_SHAPE = { patchSize: 2, channels: 128, numBlocks: 4, layersPerBlock: 2, numClasses: 0 };

export interface StepOptions {
  backend: Backend;
  precision: Precision;
  /** The data loader's threads (--workers); undefined: the loader's default. */
  workers?: number;
}

/** A model and its trainer at a benchmark's shape, fresh weights or a shipped model's, after one step (the workspace). */
export async function trainingRun(o: StepOptions, preset: keyof typeof PRESETS | 'bpd', batch: number, steps: number, shipped?: string): Promise<{ model: TarFlow; trainer: Trainer }> {
  const { device } = o.backend;
  const data = await loadMnist('train');
  const shape = preset === 'bpd' ? BPD_SHAPE : { numClasses: 10, ...PRESETS[preset] };
  const model = shipped !== undefined ? await loadModel(pretrainedPath(shipped), { device, precision: o.precision })
    : new TarFlow({ inChannels: 1, imgSize: 28, ...shape }, { device, seed: 0, precision: o.precision });
  try {
    // Continuing from trained weights, the schedule the shipped model's later runs used (the default's 2e-3 reached in
    // two warm-up steps would soon make them untrained ones).
    const schedule = shipped !== undefined ? { steps: 5000, lr: 3e-4, warmupSteps: 100 } : { steps: steps + 2 };
    const trainer = new Trainer(model, data, { batchSize: batch, seed: 0, ...schedule, ...(preset === 'bpd' ? { noise: 'uniform' as const } : {}) },
      { workers: o.workers });
    try {
      trainer.trainStep(); // allocates the workspace
    } catch (err) {
      trainer.dispose();
      throw err;
    }
    return { model, trainer };
  } catch (err) {
    model.dispose();
    throw err;
  }
}

/** Training images/s: the median of `steps` steps after one that sizes the workspace. */
export async function trainingRow(o: StepOptions, preset: keyof typeof PRESETS | 'bpd', batch: number, steps: number, shipped?: string): Promise<Measured> {
  const { model, trainer } = await trainingRun(o, preset, batch, steps, shipped);
  try {
    const times: number[] = [];
    for (let i = 0; i < steps; i++) {
      const t0 = performance.now();
      trainer.trainStep();
      times.push(performance.now() - t0);
    }
    const ms = median(times);
    // Matrix work dominates: 2 (forward) + 4 (backward) flops per weight per token.
    const gflopPerImage = (model.parameterCount * 6) / 1e9;
    const perImage = gflopPerImage * model.shape.tokens;
    const kernel = o.precision === 'bf16' ? o.backend.bf16GemmKernel?.() : undefined;
    const row: BenchRow = {
      part: 'train', name: `${preset}${shipped !== undefined ? ` (${shipped} weights)` : ''} batch ${batch}`, value: batch / (ms / 1000), unit: 'images/s',
      precision: o.precision, ...(kernel === undefined ? {} : { kernel }), median_ms: ms, samples: steps, batch, gflops_effective: (perImage * batch) / (ms / 1000),
    };
    return { rows: [row], text: formatTraining(row) };
  } finally {
    trainer.dispose();
    model.dispose();
  }
}

export function formatTraining(r: BenchRow): string {
  const kernel = r.precision === 'bf16' ? ` (${r.kernel ?? 'bf16'})` : '';
  return `train ${r.name} ${r.precision}${kernel}: ${r.value.toFixed(1)} images/s (median step ${r.median_ms!.toFixed(0)} ms of ${r.samples}; ${r.gflops_effective!.toFixed(0)} GFLOP/s effective, counting 6 flops per weight per token)`;
}

/**
 * Seconds to draw `count` images in one batch: the median of `repeats` runs after one of the same size (the KV
 * cache and workspace are sized by the first). `name`: a preset (fresh weights) or a shipped model, drawn at the
 * temperature `tarflow sample` uses for it (the likelihood model's inverse overflows float32 at 1 often enough to
 * run out of redraws).
 */
export async function samplingRow(backend: Backend, name: keyof typeof PRESETS | 'mnist-cond' | 'mnist-bpd', count: number, guidance: number, repeats: number): Promise<Measured> {
  const { device } = backend;
  const model = shippedModel(name) ? await loadModel(pretrainedPath(name), { device })
    : new TarFlow({ inChannels: 1, imgSize: 28, numClasses: 10, ...PRESETS[name as keyof typeof PRESETS] }, { device, seed: 0 });
  try {
    const temperature = defaultTemperature(model);
    const draw = (seed: number) => generate(model, { count, seed, guidance, batchSize: count, temperature });
    draw(repeats);
    const times: number[] = [];
    for (let r = 0; r < repeats; r++) {
      const t0 = performance.now();
      draw(r);
      times.push(performance.now() - t0);
    }
    const ms = median(times);
    const row: BenchRow = {
      part: 'sample', name: `${name}${guidance ? ' guided' : ''}`, value: count / (ms / 1000), unit: 'images/s', median_ms: ms, samples: repeats,
      batch: count, guidance, temperature,
    };
    const how = `${guidance ? ` guided (w=${guidance})` : ' unguided'}${temperature !== 1 ? `, temperature ${temperature}` : ''}`;
    return { rows: [row], text: `sample ${name} ${row.batch} images${how}: ${(row.median_ms! / 1000).toFixed(3)} s (${row.value.toFixed(0)} images/s, median of ${row.samples})` };
  } finally {
    model.dispose();
  }
}
