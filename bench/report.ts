/**
 * The shape of `npm run bench -- --json`: one JSON document on stdout once every part has run (the text lines go to
 * stderr meanwhile). The rows are the same objects the text lines are printed from, so the two cannot disagree.
 * Field names are snake_case with their unit in the name where the row's `unit` does not give it.
 */
import type { Precision } from '../lib/backend.js';
import type { BenchPart } from './args.js';

export interface BenchReport {
  /** The device the run resolved to (after `--device auto` and TARFLOW_DEVICE). */
  device: 'cpu' | 'cuda';
  /** The native thread pool's size. */
  threads: number;
  /** --precision, or fp32: the matrix products of the gemm, attention, train and profile rows (each such row also says). */
  precision: Precision;
  quick: boolean;
  /** process.version. */
  node: string;
  /** os.cpus()[0].model. */
  cpu: string;
  /** When the run began, ISO 8601. */
  started: string;
  /** Every measurement, in the order taken. */
  rows: BenchRow[];
  /** Every measurement that threw a library error (the exit status is then 1). */
  failed: BenchFailure[];
  /** The GPU targets table, when the targets part ran. */
  targets?: TargetsReportRow[];
  /** The matrix products of the targets table (its own default: bf16 on CUDA, whatever `precision` says). */
  targets_precision?: Precision;
}

/**
 * One measurement. `value` in `unit` is the row's headline figure: a rate (higher is better) for gemm, attention,
 * loader, train and sample rows; milliseconds per training step for profile rows; kNN accuracy for kv-cache rows;
 * the share of time spent waiting for the loader's "consumer" rows. A figure that is not finite is written as null.
 */
export interface BenchRow {
  part: BenchPart;
  /** Unique within its part: the shape, preset or model measured (and the setting, where one part measures several). */
  name: string;
  value: number;
  unit: string;
  /** The matrix products' precision, for the rows it sets. */
  precision?: Precision;
  /**
   * The median time of one timed run (a training step, one batch of samples; gemm and attention: one call, the median
   * of benchmark.js's samples, each the mean call of one timed cycle), from which `value` comes.
   */
  median_ms?: number;
  /** Timed runs (steps, rounds; gemm and attention: benchmark.js's cycles) the figure comes from. */
  samples?: number;
  /** gemm and attention: benchmark.js's relative margin of error of its samples' mean, in percent (95%; it shrinks with more samples). */
  rme_percent?: number;
  /** Flops one timed call counts (gemm, attention). */
  flops?: number;
  /** attention: the fused kernels (CUDA) rather than the training ops that save the probabilities. */
  fused?: boolean;
  /** The bf16 GEMM kernel that ran, where a choice exists (train rows in bf16; gemm rows on the CPU in bf16). */
  kernel?: string;
  /** Images per batch (loader, train) or per sampling run (sample). */
  batch?: number;
  /** Data loader threads (loader). */
  workers?: number;
  /** The goal rate, in `unit` (loader). */
  goal?: number;
  /** value / goal (loader). */
  goal_ratio?: number;
  /** How long the consumer is busy between batches, at the goal rate (loader consumer rows). */
  busy_ms?: number;
  /** Training rate as matrix work, counting 6 flops per weight per token (train). */
  gflops_effective?: number;
  /** Classifier-free guidance weight (sample). */
  guidance?: number;
  /** Sampling temperature (sample). */
  temperature?: number;
  /** Samples drawn per variant (kv-cache). */
  images?: number;
  /** Times the op ran in one training step (profile op rows). */
  calls_per_step?: number;
  /** The op's part of the step's wall time, in percent (profile op rows). */
  share_percent?: number;
  /** Pixels of the 8-bit samples that differ from the fp32 reference, in percent (kv-cache; absent for the reference). */
  pixels_differ_percent?: number;
  /** Mean absolute difference from the fp32 reference, in 8-bit levels (kv-cache). */
  mean_abs_diff?: number;
  /** Largest absolute difference from the fp32 reference, in 8-bit levels (kv-cache). */
  max_abs_diff?: number;
}

export interface BenchFailure {
  part: BenchPart;
  /** The row's name; a part that failed before its first row has the part's name. */
  name: string;
  /** The library's error code (ERR_TARFLOW_...). */
  code: string;
  message: string;
}

/**
 * A row of the GPU targets table. official, goal, ours and floor are numbers in `unit` where the cell is one figure,
 * and the table's text where it is not ("6,000-8,000 img/s", "skipped on the CPU", a failure).
 */
export interface TargetsReportRow {
  work: string;
  /** The unit of the numeric cells. */
  unit: string;
  official: number | string;
  /** A lower bound for rates, an upper bound for memory. */
  goal: number | string;
  ours: number | string;
  /** The best the row could do at the measured matrix and copy rates; null where the row has none. */
  floor: number | string | null;
  /** ours / floor (1: at the floor); null where there is no floor. */
  of_floor: number | null;
  /** Figures of the row beyond the headline one (the attention row's forward+backward and unfused rates, say). */
  more?: Record<string, number>;
  /** The measurement threw: its error. */
  failed?: { code: string; message: string };
}

/** What a benchmark row hands the runner: its rows for the JSON report and the text printed from those same rows. */
export interface Measured {
  rows: BenchRow[];
  text: string;
}
