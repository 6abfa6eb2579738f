#!/usr/bin/env node
// A small end-to-end run on one device: training steps (forward, backward, AdamW) and a guided sampling run, in the
// model's matrix precision (fp32, bf16, or both one after the other). scripts/gpu-check.sh runs it under
// compute-sanitizer (memcheck, racecheck) and uses it for a rough timing of both backends and both precisions.
// Usage: node scripts/gpu-smoke.mjs [cuda|cpu] [steps] [fp32|bf16|both]   (needs the compiled dist/)
import { performance } from 'node:perf_hooks';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const { TarFlow } = await import(pathToFileURL(join(root, 'dist', 'lib', 'model.js')).href);
const { ParamSet } = await import(pathToFileURL(join(root, 'dist', 'lib', 'params.js')).href);

const device = process.argv[2] ?? 'cuda';
const steps = Number(process.argv[3] ?? 1);
const which = process.argv[4] ?? 'fp32';
const precisions = which === 'both' ? ['fp32', 'bf16'] : [which];
const config = { inChannels: 1, imgSize: 16, patchSize: 4, channels: 128, numBlocks: 2, layersPerBlock: 2, nvp: true, numClasses: 10 };
const B = 8;

function run(precision) {
  const model = new TarFlow(config, { device, seed: 1, precision });
  const ws = model.workspace(B);
  const x = new Float32Array(B * 16 * 16);
  for (let i = 0; i < x.length; i++) x[i] = Math.sin(i * 0.37) * 0.9;
  const y = Int32Array.from({ length: B }, (_, i) => (i === 1 ? -1 : i % 10));
  const grads = new ParamSet(model.backend, model.config, model.specs, model.dtype);
  const m = new model.backend.Tensor(model.dtype, [model.params.flat.size]);
  const v = new model.backend.Tensor(model.dtype, [model.params.flat.size]);

  let loss = NaN;
  const t0 = performance.now();
  for (let s = 1; s <= steps; s++) {
    model.setInputs(ws, x, y);
    grads.flat.fill(0);
    loss = model.forward(ws).loss;
    model.backward(ws, grads);
    model.ops.adamw(model.params.flat, grads.flat, m, v, { lr: 1e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 1e-4, step: s });
  }
  const finite = model.ops.allFinite(model.params.flat);
  const t1 = performance.now();

  const { tokens, patchDim } = model.shape;
  const z = new model.backend.Tensor('float32', [B, tokens, patchDim]);
  model.ops.normal(z, 7, 0, 0);
  const out = new model.backend.Tensor('float32', [B, 1, 16, 16]);
  const labels = new model.backend.Tensor('int32', [B], y);
  model.reverse(z, out, labels, { guidance: 1.5, attnTemp: 0.8 });
  const img = out.toArray();
  const t2 = performance.now();
  const sampleFinite = img.every((a) => Number.isFinite(a));

  console.log(JSON.stringify({
    device: model.backend.device, precision, steps, loss: Number(loss.toFixed(6)), paramsFinite: finite, samplesFinite: sampleFinite,
    msPerStep: Number(((t1 - t0) / steps).toFixed(2)), msSample: Number((t2 - t1).toFixed(2)),
  }));
  for (const t of [z, out, labels, m, v]) t.dispose();
  grads.dispose();
  model.dispose();
  return Number.isFinite(loss) && finite && sampleFinite;
}

let ok = true;
for (const precision of precisions) ok = run(precision) && ok;
if (!ok) process.exit(1);
