import { spawnSync } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import type { BenchReport } from '../bench/report.js';
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

test('bench --json: stdout is one JSON document of the rows, each a number in its unit, the same the text lines print', () => {
  const r = bench(['--device', 'cpu', '--only', 'gemm', '--quick', '--json']);
  assert.is(r.status, 0, r.stderr);
  // JSON.parse of the whole of stdout: a stray text line there would throw.
  const report = JSON.parse(r.stdout) as BenchReport;
  assert.is(report.device, 'cpu');
  assert.is(report.quick, true);
  assert.is(report.precision, 'fp32');
  assert.is(report.node, process.version);
  assert.type(report.cpu, 'string');
  assert.ok(report.threads >= 1);
  assert.ok(Math.abs(Date.parse(report.started) - Date.now()) < 600_000, `started ${report.started}`);
  assert.equal(report.failed, []);
  assert.is(report.targets, undefined, 'no targets part run');
  assert.equal(report.rows.map((row) => row.name), ['1024^3', 'qkv M=12544 N=384 K=128', 'proj M=12544 N=128 K=128', 'fc1 M=12544 N=512 K=128',
    'fc2 M=12544 N=128 K=512', 'decode M=100 N=512 K=128']);
  for (const row of report.rows) {
    assert.is(row.part, 'gemm');
    assert.is(row.unit, 'GFLOP/s');
    assert.ok(Number.isFinite(row.value) && row.value > 0, `${row.name}: ${row.value}`);
    assert.ok(row.samples! >= 5, `${row.name}: ${row.samples} samples`);
    assert.ok(Math.abs(row.value - row.flops! / row.median_ms! / 1e6) < 1e-6 * row.value, `${row.name}: the rate is the flops over the median time`);
    assert.not.ok('mean_ms' in row, `${row.name}: one statistic, the median, in every part`);
    // The text went to stderr, printed from the same row.
    assert.ok(r.stderr.includes(`${row.value.toFixed(1)} GFLOP/s  (median ${row.median_ms!.toFixed(3)} ms of ${row.samples}`), `${row.name}'s text line`);
  }
  assert.match(r.stderr, /^tarflow bench on cpu, \d+ threads \(quick\)\n/);
});

test('bench --json: rows that fail are listed under failed, with exit 1 and stdout still only the document', () => {
  const r = bench(['--device', 'cpu', '--only', 'gemm,attention', '--quick', '--json'], { TARFLOW_MEMORY_LIMIT: '30000000' });
  assert.is(r.status, 1, r.stderr);
  const report = JSON.parse(r.stdout) as BenchReport;
  assert.equal(report.rows, []);
  assert.equal(report.failed.map((f) => [f.part, f.name, f.code]), [['gemm', 'gemm', 'ERR_TARFLOW_OUT_OF_MEMORY'], ['attention', 'attention', 'ERR_TARFLOW_OUT_OF_MEMORY']]);
  assert.match(report.failed[1].message, /25690112 bytes are in use/);
  assert.match(r.stderr, /^gemm: failed: ERR_TARFLOW_OUT_OF_MEMORY: /m);
  assert.match(r.stderr, /tarflow bench: 2 rows failed/);
});

test('bench --json: a bad argument is still one line on stderr and exit 2, with nothing on stdout', () => {
  const r = bench(['--json', '--only', 'gem']);
  assert.is(r.status, 2, r.stderr);
  assert.is(r.stdout, '');
  assert.match(r.stderr, /^tarflow bench: --only takes parts from .*"gem" is not one.*\n$/);
});

test('bench --device auto: the CPU-fallback warning comes before the first row, not after the kernel rows', () => {
  if (cudaAnswers()) return;
  const dir = mkdtempSync(join(tmpdir(), 'tarflow-bench-'));
  const file = join(dir, 'out.txt');
  // stdout and stderr into one file, so that their order is the order written; the memory cap makes the row quick.
  const fd = openSync(file, 'w');
  try {
    spawnSync(process.execPath, [run, '--device', 'auto', '--only', 'gemm', '--quick'], {
      stdio: ['ignore', fd, fd], env: { ...process.env, TARFLOW_QUIET: '', TARFLOW_MEMORY_LIMIT: '30000000' }, timeout: 120_000,
    });
    closeSync(fd);
    const out = readFileSync(file, 'utf8');
    const warning = out.indexOf('TARFLOW_CPU_FALLBACK');
    const row = out.indexOf('gemm: failed');
    assert.ok(warning >= 0 && row >= 0, out);
    assert.ok(warning < row, out);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test.run();
