/**
 * Parity with the reference PyTorch implementation: every golden-*.safetensors file in TARFLOW_GOLDEN_DIR.
 * Forward latents, per-block outputs, log-dets, loss; every gradient; one AdamW step; every sampler output;
 * the denoising step.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { basename } from 'node:path';
import { readSafetensors, toFloat32, toInt32, type SafetensorsFile } from '../lib/safetensors.js';
import { configFromMetadata, loadStateDict } from '../lib/checkpoint.js';
import { TarFlow } from '../lib/model.js';
import { getBackend, type DeviceName } from '../lib/backend.js';
import { ParamSet } from '../lib/params.js';
import { denoise } from '../lib/sampling.js';
import { goldenFiles, relError } from './helpers.js';

const FWD_TOL = 1e-4;
const SAMPLE_TOL = 1e-3;

const files = goldenFiles();
test('golden files are present', () => {
  assert.ok(files.length > 0, 'no golden-*.safetensors found; set TARFLOW_GOLDEN_DIR');
});

function tensor(file: SafetensorsFile, name: string): Float32Array {
  const t = file.tensors.get(name);
  if (!t) throw new Error(`golden file lacks ${name}`);
  return toFloat32(t);
}

function expectClose(what: string, got: ArrayLike<number>, want: ArrayLike<number>, tol: number) {
  const err = relError(got, want);
  assert.ok(err < tol, `${what}: relative error ${err.toExponential(3)} >= ${tol}`);
}

/** The CPU always; the GPU too when the CUDA backend loads and a device answers. */
function devices(): DeviceName[] {
  try {
    getBackend('cuda');
    return ['cpu', 'cuda'];
  } catch {
    return ['cpu'];
  }
}

async function loadGolden(path: string, device: DeviceName) {
  const file = await readSafetensors(path);
  const config = configFromMetadata(file, path)!;
  const model = new TarFlow(config, { device, noInit: true });
  loadStateDict(model, file.tensors, 'param.', path);
  return { file, model, config };
}

for (const device of devices())
for (const path of files) {
  const name = `${basename(path, '.safetensors')} on ${device}`;

  test(`${name}: forward, loss, gradients and one AdamW step`, async () => {
    const { file, model, config } = await loadGolden(path, device);
    const x = tensor(file, 'input.x');
    const B = x.length / (config.inChannels * config.imgSize ** 2);
    const ws = model.workspace(B);
    const y = file.tensors.has('input.y') ? toInt32(file.tensors.get('input.y')!) : null;
    model.setInputs(ws, x, y);
    const { loss, logdet } = model.forward(ws);
    for (let k = 0; k < config.numBlocks; k++) expectClose(`block ${k} output`, ws.blocks[k].out.toArray(), tensor(file, `output.block${k}`), FWD_TOL);
    expectClose('z', ws.z.toArray(), tensor(file, 'output.z'), FWD_TOL);
    expectClose('logdets', logdet, tensor(file, 'output.logdets'), FWD_TOL);
    expectClose('loss', [loss], tensor(file, 'output.loss'), FWD_TOL);

    const grads = new ParamSet(model.backend, model.config, model.specs, model.dtype);
    model.backward(ws, grads);
    expectClose('grad x', ws.dx.toArray(), tensor(file, 'grad.x'), FWD_TOL);
    let checked = 0;
    for (const spec of model.specs) {
      expectClose(`grad ${spec.name}`, grads.get(spec.name).toArray(), tensor(file, `grad.${spec.name}`), FWD_TOL);
      checked++;
    }
    assert.is(checked, model.specs.length);

    const m = new model.backend.Tensor(model.dtype, [model.params.flat.size]);
    const v = new model.backend.Tensor(model.dtype, [model.params.flat.size]);
    model.ops.adamw(model.params.flat, grads.flat, m, v, { lr: 1e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 1e-4, step: 1 });
    for (const spec of model.specs) {
      expectClose(`adamw ${spec.name}`, model.params.get(spec.name).toArray(), tensor(file, `adamw1.${spec.name}`), FWD_TOL);
    }
    m.dispose(); v.dispose(); grads.dispose(); model.dispose();
  });

  test(`${name}: sampling (all guidance variants) and denoising`, async () => {
    const { file, model, config } = await loadGolden(path, device);
    const noise = tensor(file, 'reverse.noise');
    const { tokens, patchDim } = model.shape;
    const B = noise.length / (tokens * patchDim);
    const labels = file.tensors.has('reverse.y') ? new model.backend.Tensor('int32', [B], toInt32(file.tensors.get('reverse.y')!)) : null;
    const variants: Record<string, { guidance?: number; guideWhat?: 'ab' | 'a' | 'b'; attnTemp?: number; annealed?: boolean }> = {
      'reverse.plain': {},
      'reverse.cfg': { guidance: 1.5 },
      'reverse.cfg_annealed_temp': { guidance: 2, annealed: true, attnTemp: 0.7 },
      'reverse.uncond_guided': { guidance: 0.8, attnTemp: 0.5 },
      'reverse.uncond_guided_b_only': { guidance: 0.8, guideWhat: 'b', attnTemp: 1.5 },
    };
    let ran = 0;
    for (const [key, opts] of Object.entries(variants)) {
      if (!file.tensors.has(key)) continue;
      const z = new model.backend.Tensor('float32', [B, tokens, patchDim], noise);
      const out = new model.backend.Tensor('float32', [B, config.inChannels, config.imgSize, config.imgSize]);
      model.reverse(z, out, labels, opts);
      expectClose(key, out.toArray(), tensor(file, key), SAMPLE_TOL);
      z.dispose(); out.dispose();
      ran++;
    }
    assert.ok(ran >= 2, 'expected at least two sampler outputs in the golden file');

    const sigma = tensor(file, 'denoise.sigma')[0];
    const plain = tensor(file, 'reverse.plain');
    const y = labels ? (labels.toArray() as Int32Array) : null;
    const denoised = denoise(model, plain, y, { sigma });
    expectClose('denoise.output', denoised, tensor(file, 'denoise.output'), SAMPLE_TOL);
    labels?.dispose();
    model.dispose();
  });
}

test.run();
