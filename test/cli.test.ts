/** The tarflow command and the async (worker-thread) API, end to end on a small .npy dataset. */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { PNG } from 'pngjs';
import { serializeNpy } from '../lib/npy.js';
import { parseSafetensors, serializeSafetensors, toFloat32 } from '../lib/safetensors.js';
import { sample, train } from '../lib/jobs.js';
import { loadModel } from '../lib/checkpoint.js';
import { PRETRAINED, pretrainedPath } from '../lib/pretrained.js';
import { repoRoot } from './helpers.js';
import { runEvaluate, runSample, runScore } from '../lib/tasks.js';
import { TarflowError } from '../lib/errors.js';
import { LOCK_FILE } from '../lib/folder-lock.js';
import { successExitCode } from '../lib/cli.js';

const dir = mkdtempSync(join(tmpdir(), 'tarflow-cli-'));
const cli = join(repoRoot, 'dist', 'lib', 'cli.js');
const N = 48, S = 8;

const images = new Uint8Array(N * S * S);
const labels = new Int32Array(N);
for (let i = 0; i < N; i++) {
  labels[i] = i % 3;
  for (let p = 0; p < S * S; p++) images[i * S * S + p] = (p % S) >= labels[i] * 2 && (p % S) < labels[i] * 2 + 3 ? 220 : (i * 7 + p) % 25;
}
const imagesPath = join(dir, 'x.npy');
const labelsPath = join(dir, 'y.npy');
writeFileSync(imagesPath, serializeNpy(images, [N, S, S]));
writeFileSync(labelsPath, serializeNpy(labels, [N]));

function run(args: string[]) {
  const r = spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', env: { ...process.env, TARFLOW_QUIET: '1' }, timeout: 120_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

const runDir = join(dir, 'run');
const baseTrain = ['train', '--dataset', imagesPath, '--labels', labelsPath, '--batch-size', '16', '--out', runDir, '--eval-images', '0'];

test('Ctrl-C exits with 130 only when it stopped work short: a job that finished its last batch exits with 0', () => {
  assert.is(successExitCode(false, { aborted: false }), 0);
  assert.is(successExitCode(true, { aborted: true, steps: 12 }), 130, 'training stopped and saved');
  assert.is(successExitCode(true, { aborted: false, steps: 400 }), 0, 'training had finished');
  assert.is(successExitCode(true, { images: 100, generated: 100 }), 0, 'a generate run that completed');
  assert.is(successExitCode(true, null), 0);
});

test('train writes a checkpoint, its state and a sample grid, and reports JSON', () => {
  const r = run([...baseTrain, '--steps', '4', '--json']);
  assert.is(r.code, 0, r.stderr);
  const out = JSON.parse(r.stdout);
  assert.is(out.steps, 4);
  assert.ok(Number.isFinite(out.finalLoss));
  for (const f of ['checkpoint.safetensors', 'train-state.safetensors', 'samples.png']) assert.ok(existsSync(join(runDir, f)), f);
  assert.match(r.stderr, /train 4\/4/);
});

test('a likelihood run (--noise uniform) draws its sample grid at temperature 0.7 unless --sample-temperature says otherwise', () => {
  const grids = ['', '1'].map((t) => {
    const out = join(dir, `uniform-${t || 'default'}`);
    const r = run(['train', '--dataset', imagesPath, '--unconditional', '--noise', 'uniform', '--batch-size', '16', '--steps', '2',
      '--eval-images', '0', '--out', out, ...(t ? ['--sample-temperature', t] : [])]);
    assert.is(r.code, 0, r.stderr);
    return { out, png: readFileSync(join(out, 'samples.png')) };
  });
  // The grid is 100 samples at seed 1; `sample` draws the same ones at the temperature asked for.
  for (const [g, t] of [[grids[0], '0.7'], [grids[1], '1']] as const) {
    const path = join(g.out, `resampled-${t}.png`);
    const r = run(['sample', '--checkpoint', join(g.out, 'checkpoint.safetensors'), '--seed', '1', '--temperature', t, '--out', path]);
    assert.is(r.code, 0, r.stderr);
    assert.ok(readFileSync(path).equals(g.png), `the grid is not the temperature-${t} sample`);
  }
  // the checkpoint says how its samples map back to pixels
  assert.is(parseSafetensors(readFileSync(join(grids[0].out, 'checkpoint.safetensors'))).metadata.noise, 'uniform');
  assert.is(parseSafetensors(readFileSync(join(runDir, 'checkpoint.safetensors'))).metadata.noise, undefined, 'a Gaussian-noise run adds nothing');
});

test('train refuses to overwrite a run without --resume; --resume continues it', () => {
  const again = run([...baseTrain, '--steps', '4']);
  assert.is(again.code, 1);
  assert.match(again.stderr, /--resume/);
  const r = run([...baseTrain, '--steps', '6', '--resume', '--json']);
  assert.is(r.code, 0, r.stderr);
  const out = JSON.parse(r.stdout);
  assert.is(out.resumedFromStep, 4);
  assert.is(out.steps, 6);
});

test('train --precision bf16 runs the matrix products in bf16: a loss near, but not equal to, the fp32 one', () => {
  const losses = ['fp32', 'bf16'].map((precision) => {
    const r = run([...baseTrain, '--steps', '3', '--json', '--precision', precision, '--out', join(dir, `precision-${precision}`)]);
    assert.is(r.code, 0, r.stderr);
    return JSON.parse(r.stdout).finalLoss as number;
  });
  assert.is.not(losses[0], losses[1]);
  assert.ok(Math.abs(losses[0] - losses[1]) < 2e-2 * Math.max(1, Math.abs(losses[0])), `fp32 ${losses[0]} vs bf16 ${losses[1]}`);
});

test('train --init starts from a checkpoint\'s weights and config, with a fresh optimizer', () => {
  const source = parseSafetensors(readFileSync(join(runDir, 'checkpoint.safetensors')));
  const out = join(dir, 'init');
  // a learning rate of 1e-12 leaves the weights where --init put them, so the saved checkpoint shows where it started
  const r = run([...baseTrain, '--init', join(runDir, 'checkpoint.safetensors'), '--steps', '1', '--lr', '1e-12', '--weight-decay', '0', '--out', out, '--json']);
  assert.is(r.code, 0, r.stderr);
  assert.match(r.stderr, /starting from the weights of/);
  const started = parseSafetensors(readFileSync(join(out, 'checkpoint.safetensors')));
  const fresh = run([...baseTrain, '--steps', '1', '--lr', '1e-12', '--weight-decay', '0', '--out', join(dir, 'fresh'), '--json']);
  assert.is(fresh.code, 0, fresh.stderr);
  const freshFile = parseSafetensors(readFileSync(join(dir, 'fresh', 'checkpoint.safetensors')));
  let fromSource = 0, fromFresh = 0;
  for (const [name, t] of source.tensors) {
    const a = toFloat32(t), b = toFloat32(started.tensors.get(name)!), c = toFloat32(freshFile.tensors.get(name)!);
    for (let i = 0; i < a.length; i++) {
      fromSource = Math.max(fromSource, Math.abs(a[i] - b[i]));
      fromFresh = Math.max(fromFresh, Math.abs(c[i] - b[i]));
    }
  }
  assert.ok(fromSource < 1e-6, `moved ${fromSource} from the --init weights`);
  assert.ok(fromFresh > 1e-3, `only ${fromFresh} from a fresh initialisation`);
  // the config comes from the checkpoint, so a preset or a contradicting --unconditional is refused
  const withPreset = run([...baseTrain, '--init', join(runDir, 'checkpoint.safetensors'), '--preset', 'small', '--out', join(dir, 'init-preset')]);
  assert.is(withPreset.code, 1);
  assert.match(withPreset.stderr, /drop preset/);
  const uncond = run([...baseTrain, '--init', join(runDir, 'checkpoint.safetensors'), '--unconditional', '--out', join(dir, 'init-uncond')]);
  assert.is(uncond.code, 1);
  assert.match(uncond.stderr, /class-conditional \(3 classes\); drop conditional: false \(--unconditional\)/);
});

test('sample writes a PNG grid of the right size, and a folder of PNGs named and drawn as generate\'s', () => {
  const grid = join(dir, 'grid.png');
  const r = run(['sample', '--checkpoint', join(runDir, 'checkpoint.safetensors'), '--count', '6', '--guidance', '1.5', '--denoise', '0.1', '--out', grid, '--json']);
  assert.is(r.code, 0, r.stderr);
  const png = PNG.sync.read(readFileSync(grid));
  // 3 columns (one per class) x 2 rows of 8x8 tiles with 2-pixel padding
  assert.is(png.width, 3 * S + 4 * 2);
  assert.is(png.height, 2 * S + 3 * 2);
  const folder = join(dir, 'each');
  const r2 = run(['sample', '--checkpoint', join(runDir, 'checkpoint.safetensors'), '--count', '4', '--labels', '2', '--out', folder]);
  assert.is(r2.code, 0, r2.stderr);
  const files = readdirSync(folder).sort();
  assert.equal(files, ['000000-class2.png', '000001-class2.png', '000002-class2.png', '000003-class2.png']);
  const generated = join(dir, 'each-generated');
  const r3 = run(['generate', '--checkpoint', join(runDir, 'checkpoint.safetensors'), '--count', '4', '--labels', '2', '--out', generated]);
  assert.is(r3.code, 0, r3.stderr);
  assert.equal(readdirSync(generated).filter((f) => f !== 'manifest.json').sort(), files);
  for (const f of files) assert.ok(readFileSync(join(folder, f)).equals(readFileSync(join(generated, f))), `${f}: sample and generate drew different images`);
});

test('sample without --checkpoint uses the shipped mnist-cond model (guided, denoised)', () => {
  const out = join(dir, 'shipped.png');
  const r = run(['sample', '--count', '10', '--out', out, '--json']);
  assert.is(r.code, 0, r.stderr);
  const png = PNG.sync.read(readFileSync(out));
  assert.is(png.width, 10 * 28 + 11 * 2, 'one column per class');
  assert.is(JSON.parse(r.stdout).count, 10);
});

test('the shipped likelihood model samples at its own temperature (0.7) unless --temperature says otherwise', () => {
  const grid = (name: string, ...flags: string[]) => {
    const out = join(dir, name);
    const r = run(['sample', '--checkpoint', 'mnist-bpd', '--count', '4', '--out', out, '--json', ...flags]);
    assert.is(r.code, 0, r.stderr);
    return readFileSync(out);
  };
  const own = grid('bpd-default.png');
  assert.ok(own.equals(grid('bpd-07.png', '--temperature', '0.7')));
  assert.not.ok(own.equals(grid('bpd-1.png', '--temperature', '1')));
});

test('--denoise is refused for a model trained with uniform dequantization, naming the flag and the fix, before any folder is made', () => {
  const out = join(dir, 'bpd-denoised');
  for (const args of [['sample', '--out', join(out, 'grid.png')], ['sample', '--out', out], ['generate', '--count', '2', '--out', out]]) {
    const r = run([args[0], '--checkpoint', 'mnist-bpd', '--denoise', '0.1', ...args.slice(1)]);
    assert.is(r.code, 1, args.join(' '));
    assert.match(r.stderr, new RegExp(`^tarflow ${args[0]}: --denoise: the model was trained with uniform dequantization .*; sample this model without denoising ` +
      '\\(leave out --denoise and denoiseSigma\\), or denoise the samples of a model trained with Gaussian noise', 'm'));
  }
  assert.not.ok(existsSync(out), 'a refused command made its output folder');
  // --denoise 0 is no denoising, which every model allows
  assert.is(run(['sample', '--checkpoint', 'mnist-bpd', '--denoise', '0', '--count', '2', '--out', join(out, 'grid.png')]).code, 0);
});

test("the library takes a shipped model's name wherever it takes a checkpoint, as the command line does", async () => {
  const m = await loadModel('mnist-bpd');
  try {
    assert.is(m.config.numClasses, 0);
    assert.is(m.config.patchSize, 2);
  } finally {
    m.dispose();
  }
  assert.ok(pretrainedPath('mnist-cond').endsWith(PRETRAINED['mnist-cond'].file));
  const fromLibrary = join(dir, 'lib-shipped.png');
  const r = await sample({ checkpoint: 'mnist-cond', count: 3, labels: 4, out: fromLibrary });
  assert.is(r.count, 3);
  const fromCli = join(dir, 'cli-shipped.png');
  // Both with the model's own guidance (2) and denoising (0.1), left out on each side.
  const c = run(['sample', '--checkpoint', 'mnist-cond', '--count', '3', '--labels', '4', '--out', fromCli]);
  assert.is(c.code, 0, c.stderr);
  assert.equal(readFileSync(fromLibrary), readFileSync(fromCli), 'the same file, the same settings, the same images');
  const explicit = join(dir, 'cli-explicit.png');
  assert.is(run(['sample', '--checkpoint', 'mnist-cond', '--count', '3', '--labels', '4', '--guidance', '2', '--denoise', '0.1', '--out', explicit]).code, 0);
  assert.equal(readFileSync(fromCli), readFileSync(explicit), "left out on the command line = mnist-cond's guidance 2 and sigma 0.1");
});

test('generate: the shipped model samples at its own temperature; a run failed on NaN/Inf resumes, from --out alone, with more redraws', () => {
  const common = ['generate', '--checkpoint', 'mnist-bpd', '--count', '60', '--shard-size', '1', '--format', 'npz'];
  const own = join(dir, 'gen-own');
  assert.is(run([...common, '--count', '2', '--out', own]).code, 0);
  const ownManifest = JSON.parse(readFileSync(join(own, 'manifest.json'), 'utf8'));
  assert.is(ownManifest.options.temperature, 0.7);
  assert.is(ownManifest.checkpoint, 'mnist-bpd', 'the name, which another installation of the package finds too, not this one\'s path');
  // At temperature 1 about a fifth of the samples overflow float32 (README), so with no redraws allowed the run fails.
  // The first seed whose first failure is not image 0 shows that the shards before it are kept.
  let out = '';
  let first = 0;
  let seed = 0;
  for (; seed < 8 && first === 0; seed++) {
    out = join(dir, `gen-redraw-${seed}`);
    const failed = run([...common, '--temperature', '1', '--max-redraws', '0', '--seed', String(seed), '--out', out]);
    assert.is(failed.code, 1, `seed ${seed} drew 60 images without an overflow`);
    assert.match(failed.stderr, /NaN\/Inf in 1 draws.*--max-redraws; a generate run resumed with more keeps its finished shards/);
    first = Number(/sample (\d+) was NaN/.exec(failed.stderr)![1]);
  }
  seed--;
  assert.ok(first > 0, 'every seed tried failed at image 0');
  const otherSeed = run(['generate', '--resume', '--out', out, '--seed', String(seed + 1), '--shard-size', '1']);
  assert.is(otherSeed.code, 1);
  assert.match(otherSeed.stderr, new RegExp(`seed: expected ${seed}, the value the run in .*manifest\\.json was started with, got ${seed + 1}; a resumed run keeps its options, so leave this one out`));
  assert.match(run(['generate', '--out', out]).stderr, /--checkpoint: expected .*\(the option is required\)/, 'only a resume may leave it out');
  // one image per shard: the shards before the failing image are kept, and the resume draws only the rest. It names
  // only what may change: the checkpoint, count, format, seed and temperature (1, not the shipped model's) are the run's.
  const resumed = run(['generate', '--resume', '--out', out, '--max-redraws', '8', '--json']);
  assert.is(resumed.code, 0, resumed.stderr);
  assert.is(JSON.parse(resumed.stdout).skipped, first);
  const whole = join(dir, 'gen-whole');
  assert.is(run([...common, '--temperature', '1', '--max-redraws', '8', '--seed', String(seed), '--out', whole]).code, 0);
  for (let k = 0; k < 60; k++) {
    const shard = `shard-${String(k).padStart(5, '0')}.npz`;
    assert.ok(readFileSync(join(out, shard)).equals(readFileSync(join(whole, shard))), `${shard} as an uninterrupted run wrote it`);
  }
});

test('eval without --checkpoint measures the shipped likelihood model, mnist-bpd', () => {
  const r = run(['eval', '--limit', '20', '--json']);
  assert.is(r.code, 0, r.stderr);
  const out = JSON.parse(r.stdout);
  assert.is(out.images, 20);
  // mnist-cond, a noise-augmented sampler, scores above 5 bits/dim; the likelihood model far below
  assert.ok(out.bitsPerDim > 0.5 && out.bitsPerDim < 2.5, `bits/dim ${out.bitsPerDim}`);
});

test('score defaults to mnist-bpd and eval-samples to mnist-cond, as eval and sample do', () => {
  const digits = new Uint8Array(3 * 28 * 28);
  for (let i = 0; i < digits.length; i++) digits[i] = (i * 37) % 251;
  const path = join(dir, 'x28.npy');
  writeFileSync(path, serializeNpy(digits, [3, 28, 28]));
  const bare = run(['score', '--images', path, '--json']);
  assert.is(bare.code, 0, bare.stderr);
  const named = run(['score', '--checkpoint', 'mnist-bpd', '--images', path, '--json']);
  assert.equal(JSON.parse(bare.stdout), JSON.parse(named.stdout));
  const other = run(['score', '--checkpoint', 'mnist-cond', '--images', path, '--json']);
  assert.not.equal(JSON.parse(bare.stdout).bitsPerDim, JSON.parse(other.stdout).bitsPerDim);
  const ev = run(['eval-samples', '--count', '20', '--json']);
  assert.is(ev.code, 0, ev.stderr);
  const evNamed = run(['eval-samples', '--checkpoint', 'mnist-cond', '--count', '20', '--json']);
  const strip = (o: Record<string, unknown>) => ({ ...o, seconds: 0 });
  assert.equal(strip(JSON.parse(ev.stdout)), strip(JSON.parse(evNamed.stdout)));
});

test('every command that reads a checkpoint takes a shipped model\'s name for it', () => {
  const r = run(['eval', '--checkpoint', 'mnist-cond', '--limit', '10', '--json']);
  assert.is(r.code, 0, r.stderr);
  assert.is(JSON.parse(r.stdout).images, 10);
  // score resolves the name the same way: the model is read, and the 8x8 images are refused for their shape
  const s = run(['score', '--checkpoint', 'mnist-cond', '--images', imagesPath, '--json']);
  assert.is(s.code, 1);
  assert.match(s.stderr, /not the 1 x 28 x 28 asked for/);
});

test('eval and score report bits/dim', () => {
  const e = run(['eval', '--checkpoint', join(runDir, 'checkpoint.safetensors'), '--dataset', imagesPath, '--labels', labelsPath, '--json']);
  assert.is(e.code, 0, e.stderr);
  const ev = JSON.parse(e.stdout);
  assert.is(ev.images, N);
  assert.ok(ev.bitsPerDim > 0 && ev.bitsPerDim < 20, String(ev.bitsPerDim));
  const s = run(['score', '--checkpoint', join(runDir, 'checkpoint.safetensors'), '--images', imagesPath, '--labels', labelsPath, '--json']);
  assert.is(s.code, 0, s.stderr);
  const sc = JSON.parse(s.stdout);
  assert.is(sc.bitsPerDim.length, N);
  assert.ok(Math.abs(sc.mean - ev.bitsPerDim) < 1e-9, 'score and eval use the same dequantization noise');
});

test('bad command lines fail with a message that names the problem', () => {
  const unknown = run(['trian']);
  assert.is(unknown.code, 2);
  assert.match(unknown.stderr, /command: expected one of 'train', .*got "trian"/);
  const badNum = run(['train', '--steps', 'abc']);
  assert.is(badNum.code, 1);
  assert.match(badNum.stderr, /--steps: expected a positive integer, written in decimal, got "abc"/);
  const badFlag = run(['sample', '--bogus']);
  assert.is(badFlag.code, 2);
  assert.match(badFlag.stderr, /bogus/);
  const noCkpt = run(['sample', '--checkpoint', join(dir, 'nowhere.safetensors'), '--out', join(dir, 'x.png')]);
  assert.is(noCkpt.code, 1);
  assert.match(noCkpt.stderr, /nowhere\.safetensors/);
  const pth = run(['eval', '--checkpoint', join(dir, 'model.pth')]);
  assert.is(pth.code, 1);
  assert.match(pth.stderr, /pickle/);
  const json = run(['eval', '--checkpoint', join(dir, 'missing.safetensors'), '--json']);
  assert.is(json.code, 1);
  assert.ok(JSON.parse(json.stdout).error.code.startsWith('ERR_TARFLOW'));
  const help = run(['train', '--help']);
  assert.is(help.code, 0);
  assert.match(help.stdout, /--resume/);
  // each valued flag shows what it takes
  for (const flag of ['--steps N', '--lr X', '--labels FILE', '--dataset PATH', '--noise NAME']) assert.ok(help.stdout.includes(flag), flag);
  assert.match(run(['sample', '--help']).stdout, /--labels CLASSES +one class/);
});

test('output paths that cannot be written fail before any work; missing folders are made', () => {
  const blocker = join(dir, 'a-file');
  writeFileSync(blocker, 'not a folder');
  const jpg = run(['sample', '--count', '2', '--out', join(dir, 'grid.jpg')]);
  assert.is(jpg.code, 1);
  assert.match(jpg.stderr, /out: expected a \.png file \(one grid\) or a folder.*name the grid ".*grid\.png"/);
  assert.not.ok(existsSync(join(dir, 'grid.jpg')), 'no folder named grid.jpg was made');
  // Each command names a missing input as well: the output's error must come first, before anything is read.
  const nowhere = join(dir, 'nowhere.safetensors');
  for (const args of [
    ['sample', '--checkpoint', nowhere, '--out', join(blocker, 'grid.png')],
    ['sample', '--checkpoint', nowhere, '--out', join(blocker, 'images')],
    ['generate', '--checkpoint', nowhere, '--count', '2', '--out', join(blocker, 'gen')],
    ['train', '--dataset', join(dir, 'nowhere.npy'), '--steps', '1', '--out', join(blocker, 'run')],
  ]) {
    const r = run(args);
    assert.is(r.code, 1, args.join(' '));
    assert.match(r.stderr, /out: could not create the folder .*a-file.*a file stands where a folder is needed/, args.join(' '));
  }
  const nested = join(dir, 'new', 'deeper', 'grid.png');
  const ok = run(['sample', '--count', '2', '--out', nested]);
  assert.is(ok.code, 0, ok.stderr);
  assert.ok(existsSync(nested));
});

test('resume alone continues a run with its saved data, model and options, to the uninterrupted result', async () => {
  const options = { batchSize: 8, steps: 12, lr: 1e-3, noise: 'uniform' as const, clipGradNorm: 1, hflip: true, seed: 5, evalImages: 0 };
  const whole = await train({ dataset: imagesPath, labels: labelsPath, preset: 'small', out: join(dir, 'whole'), ...options });
  const out = join(dir, 'parted');
  const ac = new AbortController();
  const first = await train({ dataset: imagesPath, labels: labelsPath, preset: 'small', out, ...options },
    { signal: ac.signal, onProgress: (p) => { if (p.task === 'train' && p.done === 5) ac.abort(); } });
  assert.ok(first.aborted && first.steps < 12, `stopped at ${first.steps}`);
  // what the CLI's stop message tells the user to run: no dataset, preset or options
  const r = run(['train', '--resume', '--out', out, '--json']);
  assert.is(r.code, 0, r.stderr);
  const second = JSON.parse(r.stdout);
  assert.is(second.steps, 12);
  assert.is(second.resumedFromStep, first.steps);
  const params = (runOut: string) => toFloat32(parseSafetensors(readFileSync(join(runOut, 'train-state.safetensors'))).tensors.get('params')!);
  assert.equal(params(out), params(join(dir, 'whole')), 'every parameter bit for bit the uninterrupted run');
  // an option given again must agree; the length may change
  const lr = run(['train', '--resume', '--out', out, '--lr', '2e-3']);
  assert.is(lr.code, 1);
  assert.match(lr.stderr, /lr: expected 0\.001, the value the run in .*parted.* was trained with, got 0\.002/);
  const shorter = run(['train', '--resume', '--out', out, '--steps', '6']);
  assert.is(shorter.code, 1);
  assert.match(shorter.stderr, /steps: expected at least 12, the steps the run in .* has already taken, got 6/);
  const done = run(['train', '--resume', '--out', out, '--json']);
  assert.is(done.code, 0, done.stderr);
  assert.is(JSON.parse(done.stdout).finalLoss, null, 'no step ran, so no loss');
  const longer = run(['train', '--resume', '--out', out, '--steps', '14', '--json']);
  assert.is(longer.code, 0, longer.stderr);
  assert.is(JSON.parse(longer.stdout).steps, 14);
});

test('a stop request during the final evaluation ends it too, with the checkpoint saved', async () => {
  const out = join(dir, 'stop-eval');
  const ac = new AbortController();
  const tasks: string[] = [];
  const r = await train({ dataset: 'mnist', preset: 'tiny', batchSize: 8, steps: 2, out }, {
    signal: ac.signal,
    onProgress: (p) => { tasks.push(p.task); if (p.task === 'evaluate') ac.abort(); },
  });
  assert.ok(r.aborted);
  assert.is(r.steps, 2);
  assert.is(r.testBitsPerDim, null);
  assert.is(r.samples, null);
  const evaluated = tasks.filter((t) => t === 'evaluate').length;
  assert.ok(evaluated <= 2, `${evaluated} evaluation reports: it stopped within a batch or two of its twenty`);
  assert.not.ok(tasks.includes('sample'), 'no grid was drawn');
  assert.ok(existsSync(join(out, 'checkpoint.safetensors')));
});

test('an explicit config must agree with --unconditional', () => {
  const cfg = join(dir, 'cond.json');
  writeFileSync(cfg, JSON.stringify({ in_channels: 1, img_size: 8, patch_size: 4, channels: 64, num_blocks: 1, layers_per_block: 1, nvp: true, num_classes: 3 }));
  const r = run(['train', '--dataset', imagesPath, '--labels', labelsPath, '--config', cfg, '--unconditional', '--steps', '1', '--out', join(dir, 'cfg-uncond')]);
  assert.is(r.code, 1);
  assert.match(r.stderr, /the model config is class-conditional \(num_classes 3\), but conditional: false \(--unconditional\) was given/);
});

test('a resumed run keeps the float type it was saved from; another one is refused', async () => {
  const out = join(dir, 'f64');
  const spec = { dataset: imagesPath, labels: labelsPath, batchSize: 8, steps: 4, evalImages: 0, dtype: 'float64' as const, out };
  const ac = new AbortController();
  await train(spec, { signal: ac.signal, onProgress: (p) => { if (p.task === 'train' && p.done === 2) ac.abort(); } });
  const resumed = await train({ out, resume: true });
  assert.is(resumed.steps, 4);
  assert.is(parseSafetensors(readFileSync(join(out, 'train-state.safetensors'))).tensors.get('params')!.dtype, 'F64');
  try {
    await train({ out, resume: true, steps: 6, dtype: 'float32' });
    assert.unreachable('a float32 resume of a float64 run must be refused');
  } catch (err) {
    assert.match((err as Error).message, /was saved by a float64 run, but this model is float32; resume with dtype float64/);
  }
});

test('a resumed bf16 run keeps its precision: resume alone equals the run uninterrupted; fp32 is refused', async () => {
  const spec = { dataset: imagesPath, labels: labelsPath, batchSize: 8, steps: 4, evalImages: 0, precision: 'bf16' as const };
  const whole = join(dir, 'bf16-whole'), halves = join(dir, 'bf16-halves');
  await train({ ...spec, out: whole });
  const ac = new AbortController();
  await train({ ...spec, out: halves }, { signal: ac.signal, onProgress: (p) => { if (p.task === 'train' && p.done === 2) ac.abort(); } });
  const resumed = await train({ out: halves, resume: true });
  assert.is(resumed.steps, 4);
  const params = (out: string) => Buffer.from(parseSafetensors(readFileSync(join(out, 'train-state.safetensors'))).tensors.get('params')!.data);
  assert.ok(params(whole).equals(params(halves)), 'the resumed run trained in bf16, as the run it continues');
  try {
    await train({ out: halves, resume: true, steps: 6, precision: 'fp32' });
    assert.unreachable('an fp32 resume of a bf16 run must be refused');
  } catch (err) {
    assert.match((err as Error).message, /saved by a run with bf16 matrix products, but this model uses fp32; resume with precision 'bf16' \(--precision bf16\), or leave it out/);
  }
  try {
    await train({ out: halves, resume: true, steps: 6, config: { inChannels: 1, imgSize: 8, patchSize: 4, channels: 64, numBlocks: 2, layersPerBlock: 1, numClasses: 3 } });
    assert.unreachable('a resume with another config must be refused');
  } catch (err) {
    assert.match((err as Error).message, /was saved for a different model config \(.*numBlocks \d+ saved, 2 now.*\); resume with the same preset\/config/);
  }
});

test('demo starts over only a run like its own: a folder holding another run is refused and left as it was', () => {
  const before = readFileSync(join(runDir, 'train-state.safetensors'));
  const r = run(['demo', '--out', runDir, '--steps', '1']);
  assert.is(r.code, 1);
  assert.match(r.stderr, /holds a training run that is not a demo \(its training state is tagged nothing, not 'demo'\), and the demo would start it over; choose another out folder \(--out\), or continue that run with `tarflow train --resume --out /);
  assert.ok(readFileSync(join(runDir, 'train-state.safetensors')).equals(before));
  // Its own folder it starts over, so the quick start can be run again.
  const demo = join(dir, 'demo');
  for (let i = 0; i < 2; i++) {
    const again = run(['demo', '--out', demo, '--steps', '1', '--json']);
    assert.is(again.code, 0, again.stderr);
    assert.is(JSON.parse(again.stdout).steps, 1);
  }
});

test('demo leaves a plain train run of the same tiny MNIST model alone: only a run it tagged is started over', () => {
  const plain = join(dir, 'plain-tiny');
  const t = run(['train', '--steps', '1', '--batch-size', '16', '--eval-images', '0', '--out', plain]);
  assert.is(t.code, 0, t.stderr);
  const before = readFileSync(join(plain, 'train-state.safetensors'));
  const d = run(['demo', '--out', plain, '--steps', '1']);
  assert.is(d.code, 1);
  assert.match(d.stderr, /holds a training run that is not a demo \(its training state is tagged nothing, not 'demo'\)/);
  assert.ok(readFileSync(join(plain, 'train-state.safetensors')).equals(before));
  // A state from before runs were tagged says nothing; a tiny MNIST model among those is taken for the demo's.
  const state = parseSafetensors(before);
  const { tag: _tag, ...untagged } = JSON.parse(state.metadata.run) as Record<string, unknown>;
  writeFileSync(join(plain, 'train-state.safetensors'), serializeSafetensors(state.tensors, { ...state.metadata, run: JSON.stringify(untagged) }));
  const old = run(['demo', '--out', plain, '--steps', '1', '--json']);
  assert.is(old.code, 0, old.stderr);
  assert.is(JSON.parse(old.stdout).steps, 1);
});

test('library messages name the flag to change; a failed command leaves no folder; --json reports usage errors too', () => {
  const resumed = run([...baseTrain, '--resume', '--batch-size', '32']);
  assert.is(resumed.code, 1);
  assert.match(resumed.stderr, /^tarflow train: --batch-size: expected 16, the value the run in .* was trained with, got 32/m);
  const both = run(['generate', '--resume', '--out', join(dir, 'gen-own'), '--seed', '3', '--temperature', '0.5']);
  assert.is(both.code, 1);
  assert.match(both.stderr, /--seed: expected 0, the value .*; --temperature: expected 0\.7, the value/, 'every option of the list named by its flag');
  const minLr = run(['train', '--lr', '1e-3', '--min-lr', '1e-2', '--out', join(dir, 'never-made')]);
  assert.match(minLr.stderr, /--min-lr: expected at most lr \(0\.001\), got 0\.01/);
  for (const args of [['train', '--resume', '--out', join(dir, 'never-made')], ['train', '--dataset', join(dir, 'none.npy'), '--out', join(dir, 'never-made')],
    ['sample', '--checkpoint', join(dir, 'none.safetensors'), '--out', join(dir, 'never-made', 'grid.png')],
    ['sample', '--checkpoint', join(runDir, 'checkpoint.safetensors'), '--labels', '7', '--count', '2', '--out', join(dir, 'never-made', 'grid.png')],
    ['generate', '--checkpoint', join(runDir, 'checkpoint.safetensors'), '--labels', '7', '--count', '2', '--out', join(dir, 'never-made', 'gen')]]) {
    assert.is(run(args).code, 1, args.join(' '));
  }
  assert.not.ok(existsSync(join(dir, 'never-made')), 'a refused command made its output folder');
  const dangling = join(dir, 'dangling-out');
  symlinkSync(join(dir, 'nowhere-at-all'), dangling);
  const linked = run(['sample', '--checkpoint', join(dir, 'none.safetensors'), '--out', join(dangling, 'grid.png')]);
  assert.match(linked.stderr, /--out: could not create the folder .*dangling-out.*a file stands where a folder is needed/, 'named before the checkpoint is read');
  const usage = run(['sample', '--json', '--bogus']);
  assert.is(usage.code, 2);
  assert.is(JSON.parse(usage.stdout).error.code, 'ERR_TARFLOW_INVALID_ARGUMENT');
});

test('a checkpoint argument that is a training state or a misspelt model name is told so', () => {
  const state = run(['sample', '--checkpoint', join(runDir, 'train-state.safetensors'), '--count', '1', '--out', join(dir, 'st.png')]);
  assert.is(state.code, 1);
  assert.match(state.stderr, /is a training state .*not a model checkpoint; load the checkpoint\.safetensors saved beside it/);
  const name = run(['eval', '--checkpoint', 'mnist-bdp']);
  assert.is(name.code, 1);
  assert.match(name.stderr, /checkpoint: expected a \.safetensors file or the name of a shipped model \(mnist-cond, mnist-bpd\), got "mnist-bdp", which is neither/);
});

test("a shipped model's file samples with the same defaults as its name; --init keeps the checkpoint's training noise", () => {
  const byName = join(dir, 'cond-name.png'), byPath = join(dir, 'cond-path.png');
  assert.is(run(['sample', '--checkpoint', 'mnist-cond', '--count', '3', '--out', byName]).code, 0);
  const p = run(['sample', '--checkpoint', pretrainedPath('mnist-cond'), '--count', '3', '--out', byPath]);
  assert.is(p.code, 0, p.stderr);
  assert.ok(readFileSync(byName).equals(readFileSync(byPath)), 'guidance and denoising applied to the file as to the name');
  // the run in uniform-default was trained with uniform dequantization; fine-tuning it without --noise keeps that
  const out = join(dir, 'init-uniform');
  const r = run(['train', '--init', join(dir, 'uniform-default', 'checkpoint.safetensors'), '--dataset', imagesPath, '--batch-size', '16', '--steps', '1',
    '--eval-images', '0', '--out', out]);
  assert.is(r.code, 0, r.stderr);
  assert.is(parseSafetensors(readFileSync(join(out, 'checkpoint.safetensors'))).metadata.noise, 'uniform');
});

test('score --json lists the images whose bits/dim overflowed, and says so on stderr', () => {
  // random bytes are far from any digit: under mnist-bpd some of them overflow float32 in the forward pass
  const n = 4, noise = new Uint8Array(n * 784);
  let x = 12345;
  for (let i = 0; i < noise.length; i++) noise[i] = (x = (Math.imul(x, 1103515245) + 12345) >>> 0) >>> 24;
  noise.fill(0, 0, 784);
  const path = join(dir, 'noise28.npy');
  writeFileSync(path, serializeNpy(noise, [n, 28, 28]));
  const r = run(['score', '--images', path, '--json']);
  assert.is(r.code, 0, r.stderr);
  const out = JSON.parse(r.stdout) as { bitsPerDim: Array<number | null>; nonFinite: number[] };
  assert.ok(out.nonFinite.length > 0, 'no image overflowed: pick other noise');
  assert.equal(out.nonFinite, out.bitsPerDim.flatMap((b, i) => (b === null ? [i] : [])));
  assert.ok(out.bitsPerDim[0] !== null && out.bitsPerDim[0] < 1, 'a blank image scores low');
  assert.match(r.stderr, new RegExp(`${out.nonFinite.length} of ${n} images have no finite bits/dim`));
});

test('a saved run resumes with the options it saved, whatever newer option rules say; --init noise forbids --sigma', async () => {
  // Before minLr had to be at most lr, a run at lr 5e-7 saved the default minLr 1e-6: it must still resume.
  const out = join(dir, 'low-lr');
  await train({ dataset: imagesPath, labels: labelsPath, out, steps: 2, batchSize: 16, lr: 5e-7, evalImages: 0 }, { inline: true });
  const statePath = join(out, 'train-state.safetensors');
  const state = parseSafetensors(readFileSync(statePath));
  const meta = JSON.parse(state.metadata.train);
  assert.is(meta.options.minLr, 5e-7, 'a new run lowers the floor to its peak');
  meta.options.minLr = 1e-6;
  writeFileSync(statePath, serializeSafetensors(state.tensors, { ...state.metadata, train: JSON.stringify(meta) }));
  const resumed = await train({ out, resume: true, steps: 3 }, { inline: true });
  assert.is(resumed.steps, 3);
  // the init checkpoint says uniform dequantization, so a Gaussian noise level is meaningless there too
  const r = run(['train', '--init', join(dir, 'uniform-default', 'checkpoint.safetensors'), '--dataset', imagesPath, '--sigma', '0.2', '--steps', '1',
    '--out', join(dir, 'init-sigma')]);
  assert.is(r.code, 1);
  assert.match(r.stderr, /--sigma: the Gaussian noise level does nothing with uniform dequantization \(the noise .* was trained with\)/);
  assert.not.ok(existsSync(join(dir, 'init-sigma')), 'a refused run made its folder');
});

test('init never overwrites a run or its own file', () => {
  const ckpt = join(runDir, 'checkpoint.safetensors');
  const before = readFileSync(ckpt);
  const intoRun = run([...baseTrain, '--init', join(dir, 'whole', 'checkpoint.safetensors'), '--steps', '1']);
  assert.is(intoRun.code, 1);
  assert.match(intoRun.stderr, /already holds a training run/);
  const self = join(dir, 'self');
  mkdirSync(self);
  copyFileSync(ckpt, join(self, 'checkpoint.safetensors'));
  const onto = run(['train', '--dataset', imagesPath, '--labels', labelsPath, '--init', join(self, 'checkpoint.safetensors'), '--steps', '1', '--out', self]);
  assert.is(onto.code, 1);
  assert.match(onto.stderr, /init: .* is the checkpoint this run would overwrite/);
  assert.equal(readFileSync(ckpt), before);
});

test('async train runs on a worker, reports progress, stops on abort with a resumable state', async () => {
  const out = join(dir, 'async');
  const ac = new AbortController();
  const seen: number[] = [];
  const spec = { dataset: imagesPath, labels: labelsPath, batchSize: 16, steps: 50, out, evalImages: 0, seed: 3 };
  let ticks = 0;
  const timer = setInterval(() => ticks++, 1);
  const first = await train(spec, { signal: ac.signal, onProgress: (p) => { if (p.task === 'train') { seen.push(p.done); if (p.done === 2) ac.abort(); } } });
  clearInterval(timer);
  assert.ok(first.aborted);
  assert.ok(first.steps >= 2 && first.steps < 50, `stopped at ${first.steps}`);
  assert.ok(seen.length >= 2);
  assert.ok(ticks > 0, 'the event loop kept running while the worker trained');
  const second = await train({ ...spec, resume: true });
  assert.not.ok(second.aborted);
  assert.is(second.resumedFromStep, first.steps);
  assert.is(second.steps, 50);
});

test('a progress callback that throws stops the job and rejects with its error; the process lives on and the run resumes', async () => {
  const out = join(dir, 'throwing-callback');
  const spec = { dataset: imagesPath, labels: labelsPath, batchSize: 16, steps: 30, out, evalImages: 0, seed: 3 };
  const bug = new Error('a bug in the caller');
  let calls = 0;
  const outcome = await train(spec, { onProgress: (p) => { if (p.task === 'train' && p.done >= 2) { calls++; throw bug; } } }).then(() => 'resolved', (e: unknown) => e);
  assert.is(outcome, bug);
  assert.is(calls, 1, 'no callback after the one that threw');
  const resumed = await train({ ...spec, resume: true });
  assert.ok(resumed.resumedFromStep >= 2 && resumed.resumedFromStep < 30, `resumed from ${resumed.resumedFromStep}`);
  assert.is(resumed.steps, 30);
});

test('evaluate, score and sample stop before their first batch when the abort came while they loaded', async () => {
  const checkpoint = join(runDir, 'checkpoint.safetensors');
  assert.ok(existsSync(checkpoint));
  let reports = 0;
  const ctx = { progress: () => { reports++; }, log: () => {}, aborted: () => true };
  const runs = [
    () => runEvaluate({ checkpoint, dataset: imagesPath, labels: labelsPath }, ctx),
    () => runScore({ checkpoint, images: imagesPath, labels: labelsPath }, ctx),
    () => runSample({ checkpoint, count: 4, out: join(dir, 'never.png') }, ctx),
  ];
  for (const run of runs) {
    const outcome = await run().then(() => 'finished', (e: unknown) => e);
    assert.ok(outcome instanceof TarflowError && outcome.code === 'ERR_TARFLOW_ABORTED', String(outcome));
  }
  assert.is(reports, 0, 'no batch ran');
  assert.not.ok(existsSync(join(dir, 'never.png')));
});

test('two runs started into one folder: one trains, the other is refused and changes nothing; a lock left by a dead process is taken over', async () => {
  const out = join(dir, 'contended');
  const spec = { dataset: imagesPath, labels: labelsPath, batchSize: 16, steps: 3, out, evalImages: 0 };
  const [a, b] = await Promise.allSettled([train({ ...spec, seed: 1 }), train({ ...spec, seed: 2 })]);
  const won = [a, b].filter((r) => r.status === 'fulfilled');
  const lost = [a, b].filter((r): r is PromiseRejectedResult => r.status === 'rejected');
  assert.is(won.length, 1, 'exactly one run trains');
  assert.is(lost.length, 1);
  assert.match(String(lost[0].reason), /is being written by another run|already holds a training run/);
  assert.not.ok(existsSync(join(out, LOCK_FILE)), 'the winner released its claim');
  // A claim whose process has ended (killed) does not block the folder.
  const dead = spawnSync(process.execPath, ['-e', '']).pid!;
  const stale = join(dir, 'stale');
  mkdirSync(stale);
  const claim = (pid: number, started: Date) => JSON.stringify({ pid, host: hostname(), started: started.toISOString(), token: 'x' });
  writeFileSync(join(stale, LOCK_FILE), claim(dead, new Date()));
  const r = await train({ ...spec, out: stale, seed: 1 });
  assert.is(r.steps, 3);
  assert.not.ok(existsSync(join(stale, LOCK_FILE)));
  // This process's pid from before it started: an earlier process's (a restarted container's pid 1).
  writeFileSync(join(stale, LOCK_FILE), claim(process.pid, new Date(Date.now() - process.uptime() * 1000 - 60_000)));
  assert.is((await train({ ...spec, out: stale, resume: true, steps: 4 })).steps, 4);
  // A live one does (this process stands for another run), and so does a fresh file that is not a claim.
  const now = new Date();
  writeFileSync(join(stale, LOCK_FILE), claim(process.pid, now));
  const refused = await train({ ...spec, out: stale, resume: true, steps: 5 }).then(() => null, (e: unknown) => e);
  assert.match(String(refused), new RegExp(`out: .*stale is being written by another run \\(another job of this process, since ${now.toISOString()}\\).*delete .*\\.tarflow-lock`));
  writeFileSync(join(stale, LOCK_FILE), '');
  assert.match(String(await train({ ...spec, out: stale, resume: true, steps: 5 }).then(() => null, (e: unknown) => e)), /a lock file that names no process/);
  assert.ok(existsSync(join(stale, LOCK_FILE)), "a refused run leaves the other's claim");
});

test('labels that leave classes empty are refused for a new conditional model, not for an unconditional one or an --init', () => {
  const gappy = join(dir, 'gappy-y.npy');
  writeFileSync(gappy, serializeNpy(Int32Array.from({ length: N }, (_, i) => (i % 2) * 2), [N]));
  const common = ['train', '--dataset', imagesPath, '--labels', gappy, '--batch-size', '16', '--steps', '1', '--eval-images', '0'];
  const refused = run([...common, '--out', join(dir, 'gappy-cond')]);
  assert.is(refused.code, 1);
  assert.match(refused.stderr, /1 of the 3 classes 0\.\.2 has no image \(1\)/);
  assert.is(run([...common, '--unconditional', '--out', join(dir, 'gappy-uncond')]).code, 0);
  assert.is(run([...common, '--init', join(runDir, 'checkpoint.safetensors'), '--out', join(dir, 'gappy-init')]).code, 0);
});

test.after(() => rmSync(dir, { recursive: true, force: true }));
test.run();
