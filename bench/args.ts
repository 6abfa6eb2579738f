/**
 * The benchmark's command line, parsed and checked before any work: a typo in `--only` used to run nothing and exit
 * 0, and an unknown flag ended in a Node stack trace.
 */
import { parseArgs } from 'node:util';
import type { DeviceOption, Precision } from '../lib/backend.js';
import { TarflowError } from '../lib/errors.js';

/** The parts of the benchmark, in the order a full run takes them. */
export const BENCH_PARTS = ['gemm', 'attention', 'loader', 'train', 'sample', 'profile', 'kv-cache', 'targets'] as const;
export type BenchPart = (typeof BENCH_PARTS)[number];

/** The parts whose matrix products --precision sets. */
const PRECISION_PARTS: readonly BenchPart[] = ['gemm', 'attention', 'train', 'profile', 'targets'];
/** The parts that run the data loader, whose threads --workers sets. */
const WORKER_PARTS: readonly BenchPart[] = ['loader', 'train', 'profile', 'targets'];

export interface BenchArgs {
  help: boolean;
  /** Undefined: TARFLOW_DEVICE, else auto (as the library does). */
  device?: DeviceOption;
  quick: boolean;
  /** The parts to run; null: the default set (all but profile and kv-cache; targets only on CUDA). */
  only: Set<BenchPart> | null;
  /** Data loader threads; undefined: the loader's default. */
  workers?: number;
  /** Undefined: fp32 for the GEMM and training rows, and the targets table's own default (bf16 on CUDA). */
  precision?: Precision;
  /** Samples for the kv-cache accuracy part: --count, else 500, or 100 with --quick. */
  count: number;
  /** One JSON document (bench/report.ts) on stdout at the end; the text lines go to stderr. */
  json: boolean;
}

/** kv-cache samples without --count: the part draws them eight times and classifies each draw, so --quick takes a fifth of the time. */
const KV_CACHE_COUNT = 500;
const KV_CACHE_QUICK_COUNT = 100;

export const BENCH_USAGE = `npm run bench [-- OPTIONS]

Kernel microbenchmarks and whole steps: GEMM and causal attention (GFLOP/s), the data loader (images/s), training
and sampling (images/s); with --only profile, each op's share of a training step; with --only kv-cache, what a bf16
KV cache does to samples; the GPU targets table by default on CUDA, with --only targets anywhere.

  --device auto|cpu|cuda     the backend (default auto, or TARFLOW_DEVICE)
  --only PARTS               comma-separated (or repeated): ${BENCH_PARTS.slice(0, 5).join(', ')},
                             ${BENCH_PARTS.slice(5).join(', ')}
  --quick                    fewer and shorter rounds (numbers noisier; kv-cache: ${KV_CACHE_QUICK_COUNT} samples unless --count)
  --precision fp32|bf16      the matrix products of the ${PRECISION_PARTS.join(', ')} parts (default fp32;
                             the targets table defaults to bf16 on CUDA)
  --workers N                data loader threads of the ${WORKER_PARTS.join(', ')} parts, 0 to 64
                             (0: on the main thread; default: the loader's own)
  --count N                  samples for --only kv-cache (default ${KV_CACHE_COUNT}, ${KV_CACHE_QUICK_COUNT} with --quick)
  --json                     one JSON document on stdout at the end (rows, failures, the targets table;
                             its shape: bench/report.ts); the text lines go to stderr
  --help                     this text`;

function invalid(message: string): TarflowError {
  return new TarflowError('ERR_TARFLOW_INVALID_ARGUMENT', `${message.replace(/\.$/, '')}. Run \`npm run bench -- --help\` for the options.`);
}

function wholeNumber(flag: string, text: string | undefined, min: number, max: number): number | undefined {
  if (text === undefined) return undefined;
  const n = Number(text);
  if (!/^\d+$/.test(text.trim()) || n < min || n > max) throw invalid(`${flag} must be a whole number from ${min} to ${max}, got "${text}"`);
  return n;
}

export function parseBenchArgs(argv: string[]): BenchArgs {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      strict: true,
      allowPositionals: false,
      options: {
        help: { type: 'boolean', short: 'h' }, device: { type: 'string' }, quick: { type: 'boolean' }, only: { type: 'string', multiple: true },
        workers: { type: 'string' }, precision: { type: 'string' }, count: { type: 'string' }, json: { type: 'boolean' },
      },
    }));
  } catch (err) {
    // parseArgs's own message names the flag ("Unknown option '--qiuck'"); keep it, drop the stack.
    throw invalid((err as Error).message.replace(/\. To specify a positional argument.*$/s, ''));
  }
  const device = values.device;
  if (device !== undefined && device !== 'auto' && device !== 'cpu' && device !== 'cuda') throw invalid(`--device must be auto, cpu or cuda, got "${device}"`);
  const precision = values.precision;
  if (precision !== undefined && precision !== 'fp32' && precision !== 'bf16') throw invalid(`--precision must be fp32 or bf16, got "${precision}"`);
  let only: Set<BenchPart> | null = null;
  if (values.only !== undefined) {
    // Repeated, the lists add up: the last one alone would drop the parts named before it without a word.
    const parts = values.only.flatMap((list) => list.split(',')).map((p) => p.trim()).filter((p) => p !== '');
    const unknown = parts.filter((p) => !(BENCH_PARTS as readonly string[]).includes(p));
    if (parts.length === 0 || unknown.length > 0) throw invalid(`--only takes parts from ${BENCH_PARTS.join(', ')}; "${unknown.length ? unknown.join(', ') : values.only.join(',')}" is not one`);
    only = new Set(parts as BenchPart[]);
  }
  if (values.count !== undefined && !only?.has('kv-cache')) throw invalid('--count is the sample count of the kv-cache part; add --only kv-cache');
  // Otherwise the run would measure what the flag did not ask for and print it as if it had.
  const usedBy = (flag: string, parts: readonly BenchPart[]) => {
    if (only && !parts.some((p) => only!.has(p))) throw invalid(`${flag} applies to the ${parts.join(', ')} parts; --only ${[...only].join(',')} runs none of them`);
  };
  if (values.precision !== undefined) usedBy('--precision', PRECISION_PARTS);
  if (values.workers !== undefined) usedBy('--workers', WORKER_PARTS);
  return {
    help: values.help === true,
    device,
    quick: values.quick === true,
    only,
    workers: wholeNumber('--workers', values.workers, 0, 64),
    precision,
    count: wholeNumber('--count', values.count, 1, 1_000_000) ?? (values.quick ? KV_CACHE_QUICK_COUNT : KV_CACHE_COUNT),
    json: values.json === true,
  };
}

/** Whether a run with these arguments takes `part`: the named parts, or by default all but profile and kv-cache, and the targets table on CUDA only. */
export function runsPart(args: Pick<BenchArgs, 'only'>, part: BenchPart, device: 'cpu' | 'cuda'): boolean {
  if (args.only) return args.only.has(part);
  if (part === 'kv-cache' || part === 'profile') return false;
  if (part === 'targets') return device === 'cuda';
  return true;
}
