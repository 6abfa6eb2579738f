/**
 * Where a training step's time goes: each native op's share of whole steps (`npm run bench -- --only profile`).
 * The training rows say how fast a step is; this says which op to make faster. Every op of the backend's table is
 * timed while a real Trainer runs, so the breakdown is of the step users run, not of a microbenchmark.
 */
import type { Backend, Precision } from '../lib/backend.js';
import type { BenchRow } from './report.js';

export interface OpTime {
  op: string;
  /** Milliseconds per step spent in this op. */
  msPerStep: number;
  callsPerStep: number;
  /** Its part of the step's wall time. */
  share: number;
}

export interface StepProfile {
  msPerStep: number;
  /** The ops by time, largest first. */
  ops: OpTime[];
  /** The part of the step outside every op: the JavaScript between them, and the data loader's waits. */
  outsideOps: number;
}

/**
 * Runs `step` `steps` times with every op of `backend.ops` timed, and puts the table back as it was, also on error.
 * On CUDA each op is timed from a synchronised start to a synchronised end, which removes the overlap of host and
 * device: the shares are right, the total is slower than the training rows.
 */
export function profileSteps(backend: Backend, step: () => void, steps: number): StepProfile {
  const ops = backend.ops as unknown as Record<string, (...args: unknown[]) => unknown>;
  const original = { ...ops };
  const sync = backend.device === 'cuda' ? () => backend.synchronize() : () => {};
  const spent = new Map<string, { ms: number; calls: number }>();
  for (const [name, fn] of Object.entries(original)) {
    if (typeof fn !== 'function') continue;
    ops[name] = (...args: unknown[]) => {
      sync();
      const t0 = performance.now();
      try {
        return fn(...args);
      } finally {
        sync();
        const entry = spent.get(name) ?? { ms: 0, calls: 0 };
        entry.ms += performance.now() - t0;
        entry.calls++;
        spent.set(name, entry);
      }
    };
  }
  let total: number;
  try {
    const t0 = performance.now();
    for (let i = 0; i < steps; i++) step();
    sync();
    total = performance.now() - t0;
  } finally {
    Object.assign(ops, original);
  }
  const rows = [...spent].map(([op, { ms, calls }]) => ({ op, msPerStep: ms / steps, callsPerStep: calls / steps, share: ms / total }));
  rows.sort((a, b) => b.msPerStep - a.msPerStep);
  const inOps = rows.reduce((sum, r) => sum + r.msPerStep, 0);
  const msPerStep = total / steps;
  return { msPerStep, ops: rows, outsideOps: Math.max(0, 1 - inOps / msPerStep) };
}

/** The table as text: the ops that take at least `minShare` of the step, then the rest summed. */
export function formatProfile(title: string, p: StepProfile, minShare = 0.005): string {
  const shown = p.ops.filter((r) => r.share >= minShare);
  const rest = p.ops.filter((r) => r.share < minShare);
  const line = (name: string, ms: number, calls: string, share: number) =>
    `  ${name.padEnd(24)} ${ms.toFixed(1).padStart(8)} ms ${calls.padStart(6)} ${(100 * share).toFixed(1).padStart(6)}%`;
  return [
    `${title}: ${p.msPerStep.toFixed(0)} ms a step`,
    `  ${'op'.padEnd(24)} ${'per step'.padStart(11)} ${'calls'.padStart(6)} ${'share'.padStart(7)}`,
    ...shown.map((r) => line(r.op, r.msPerStep, String(Math.round(r.callsPerStep)), r.share)),
    ...(rest.length ? [line(`${rest.length} other ops`, rest.reduce((s, r) => s + r.msPerStep, 0), String(Math.round(rest.reduce((s, r) => s + r.callsPerStep, 0))), rest.reduce((s, r) => s + r.share, 0))] : []),
    line('outside the ops', p.msPerStep * p.outsideOps, '', p.outsideOps),
  ].join('\n');
}

/**
 * The profile as report rows: the whole step under `name`, then every op (not only those formatProfile shows) and the
 * time outside the ops under `name: op`.
 */
export function profileRows(name: string, p: StepProfile, steps: number, precision: Precision): BenchRow[] {
  const row = (suffix: string, ms: number, more: Partial<BenchRow>): BenchRow => ({ part: 'profile', name: `${name}${suffix}`, value: ms, unit: 'ms/step', precision, samples: steps, ...more });
  return [
    row('', p.msPerStep, {}),
    ...p.ops.map((o) => row(`: ${o.op}`, o.msPerStep, { calls_per_step: o.callsPerStep, share_percent: 100 * o.share })),
    row(': outside the ops', p.msPerStep * p.outsideOps, { share_percent: 100 * p.outsideOps }),
  ];
}
