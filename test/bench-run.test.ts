import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { getBackend } from '../lib/backend.js';
import { repoRoot } from './helpers.js';

const run = join(repoRoot, 'dist', 'bench', 'run.js');

function bench(args: string[], env: Record<string, string> = {}) {
  const r = spawnSync(process.execPath, [run, ...args], { encoding: 'utf8', env: { ...process.env, TARFLOW_QUIET: '1', ...env }, timeout: 120_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

function cudaAnswers(): boolean {
  try {
    getBackend('cuda');
    return true;
  } catch {
    return false;
  }
}

test('bench: a device that cannot be had is one line and exit 2, not a stack trace', () => {
  const bad = bench(['--only', 'gemm', '--quick'], { TARFLOW_DEVICE: 'gpu' });
  assert.is(bad.status, 2, bad.stderr);
  assert.is(bad.stderr.trim(), 'tarflow bench: TARFLOW_DEVICE: expected one of \'auto\', \'cpu\', \'cuda\', got "gpu"');
  assert.is(bad.stdout, '');
  if (cudaAnswers()) return;
  const cuda = bench(['--device', 'cuda', '--only', 'gemm', '--quick']);
  assert.is(cuda.status, 2, cuda.stderr);
  assert.match(cuda.stderr, /^tarflow bench: device 'cuda' was requested but .*; use device 'cpu' or 'auto'\n$/);
});

test('bench: a row that fails says so on its line, the next part still runs, and the exit status is 1', () => {
  // 30 MB: the GEMM rows fail at their second shape, the attention rows at their first.
  const r = bench(['--device', 'cpu', '--only', 'gemm,attention', '--quick'], { TARFLOW_MEMORY_LIMIT: '30000000' });
  assert.is(r.status, 1, r.stderr);
  assert.match(r.stdout, /^gemm: failed: ERR_TARFLOW_OUT_OF_MEMORY: /m);
  assert.match(r.stdout, /^attention: failed: ERR_TARFLOW_OUT_OF_MEMORY: .* 25690112 bytes are in use/m, 'the GEMM rows\' tensors were freed first');
  assert.is(r.stderr.trim(), 'tarflow bench: 2 rows failed (see "failed:" above)');
  assert.not.match(r.stdout + r.stderr, /\n\s+at /, 'no stack trace');
});

test.run();
