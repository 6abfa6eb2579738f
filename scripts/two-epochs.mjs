#!/usr/bin/env node
// Issue 3's end-to-end check: the `small` MNIST preset trained for 2 epochs on the GPU reaches the CPU's test
// bits/dim within 0.02, in float32 and in bf16. The CPU figure is measured once (it takes most of an hour on two
// cores) and kept below with the command that produced it; on the GPU both runs take seconds.
// Usage: node scripts/two-epochs.mjs [cuda] [fp32 bf16]   (needs the compiled dist/; exits 1 when a run misses)
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const TRAIN = ['--preset', 'small', '--unconditional', '--noise', 'uniform', '--epochs', '2', '--lr', '1e-3', '--clip-grad-norm', '1', '--seed', '0'];
// Measured on the development machine (2 cores, 2026-12-05) with `tarflow train <TRAIN> --device cpu --json`: 468 steps
// in 813 s, final loss -3.5971, test bits/dim on all 10,000 test images 3.10764. TWO_EPOCH_CPU_BPD overrides it.
const CPU_BITS_PER_DIM = Number(process.env.TWO_EPOCH_CPU_BPD ?? '3.10764');
const TOLERANCE = 0.02;

const device = process.argv[2] ?? 'cuda';
const precisions = process.argv.length > 3 ? process.argv.slice(3) : ['fp32', 'bf16'];
if (!Number.isFinite(CPU_BITS_PER_DIM)) {
  console.error(`TWO_EPOCH_CPU_BPD must be a number of bits/dim, got ${process.env.TWO_EPOCH_CPU_BPD}`);
  process.exit(2);
}
let failed = false;
for (const precision of precisions) {
  const out = mkdtempSync(join(tmpdir(), 'tarflow-2ep-'));
  try {
    const r = spawnSync(process.execPath, [join(root, 'dist', 'lib', 'cli.js'), 'train', ...TRAIN, '--device', device, '--precision', precision, '--out', out, '--json'],
      { encoding: 'utf8', env: { ...process.env, TARFLOW_QUIET: '1' } });
    if (r.status !== 0) {
      console.log(`${precision}: training failed (exit ${r.status}): ${r.stderr.trim().split('\n').slice(-3).join(' | ')}`);
      failed = true;
      continue;
    }
    const summary = JSON.parse(r.stdout);
    const bpd = summary.testBitsPerDim;
    const diff = Math.abs(bpd - CPU_BITS_PER_DIM);
    const ok = diff <= TOLERANCE;
    failed ||= !ok;
    console.log(`${precision} on ${device}: test bits/dim ${bpd.toFixed(4)} (CPU ${CPU_BITS_PER_DIM.toFixed(4)}, difference ${diff.toFixed(4)}, ` +
      `tolerance ${TOLERANCE}) in ${summary.seconds.toFixed(1)} s, ${summary.imagesPerSecond.toFixed(0)} img/s: ${ok ? 'PASS' : 'FAIL'}`);
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
}
process.exit(failed ? 1 : 0);
