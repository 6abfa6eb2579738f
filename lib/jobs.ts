/**
 * The asynchronous API: each long task runs on a worker thread, so the caller's event loop never blocks.
 * Progress arrives through callbacks; an AbortSignal stops the task between two steps (training then saves a
 * checkpoint and its state, so it can be resumed).
 */
import { Worker } from 'node:worker_threads';
import { getBackend, type DeviceOption } from './backend.js';
import { TarflowError, type TarflowErrorCode } from './errors.js';
import type {
  EvaluateSpec, Progress, SampleSpec, SampleSummary, ScoreSpec, ScoreSummary, TaskContext,
} from './tasks.js';
import type { TrainSpec, TrainSummary } from './train-task.js';
import { checkBoolean, checkCallback, checkKnownKeys, checkObject, checkSignal, describeValue, optional, validationError, type OptionNames } from './validate.js';
import { runTask, type TaskName } from './task-runners.js';
import type { GenerateSpec, GenerateSummary } from './batch-generate.js';
import type { EvalSamplesSpec, SampleQuality } from './sample-quality.js';

export interface JobOptions {
  onProgress?: (progress: Progress) => void;
  onLog?: (message: string) => void;
  signal?: AbortSignal;
  /** Run on the calling thread instead of a worker (blocks the event loop between awaits; for debugging). */
  inline?: boolean;
}

/**
 * The spec reaches the worker as a structured clone; a value that has none (a function, a symbol, a proxy) would
 * fail as a DataCloneError that names no field.
 */
function checkCopyable(spec: object): void {
  const copyable = (v: unknown) => {
    try {
      structuredClone(v);
      return true;
    } catch {
      return false;
    }
  };
  if (copyable(spec)) return;
  const expected = 'a value that can be copied to a worker thread (strings, numbers, booleans, arrays and plain objects)';
  for (const key of Object.keys(spec)) {
    const value = (spec as Record<string, unknown>)[key];
    if (!copyable(value)) {
      const misplaced = typeof value === 'function' || value instanceof AbortSignal;
      throw validationError('ERR_TARFLOW_INVALID_ARGUMENT', `spec.${key}`, expected, describeValue(value),
        misplaced ? 'callbacks and the AbortSignal go in the job options (the second argument)' : undefined);
    }
  }
  throw validationError('ERR_TARFLOW_INVALID_ARGUMENT', 'spec', expected, `${describeValue(spec)}, which cannot be copied (a proxy?)`, 'pass a plain object');
}

function runJob<T>(task: TaskName, spec: object, options: JobOptions = {}): Promise<T> {
  try {
    checkObject('spec', spec);
    checkObject('options', options);
    checkKnownKeys('options', options, { onProgress: true, onLog: true, signal: true, inline: true } satisfies OptionNames<JobOptions>);
    checkCallback('onProgress', options.onProgress);
    checkCallback('onLog', options.onLog);
    checkSignal('signal', options.signal);
    optional(options.inline, (v) => checkBoolean('inline', v));
  } catch (err) {
    return Promise.reject(err);
  }
  if (options.signal?.aborted) return Promise.reject(new TarflowError('ERR_TARFLOW_ABORTED', `${task} was aborted before it started`));
  if (options.inline) {
    const ctx: TaskContext = {
      progress: (p) => options.onProgress?.(p),
      log: (m) => options.onLog?.(m),
      aborted: () => options.signal?.aborted ?? false,
    };
    return runTask(task, spec, ctx) as Promise<T>;
  }
  // Resolve the device here: a bad device fails fast, and the CPU-fallback notice is printed once, not per worker.
  const device = (spec as { device?: DeviceOption }).device;
  try {
    checkCopyable(spec);
    getBackend(device);
  } catch (err) {
    return Promise.reject(err);
  }
  return new Promise<T>((resolve, reject) => {
    const abortFlag = new SharedArrayBuffer(4);
    const flag = new Int32Array(abortFlag);
    const worker = new Worker(new URL('./worker.js', import.meta.url), {
      workerData: { task, spec, abortFlag },
      env: { ...process.env, TARFLOW_QUIET: '1' },
      // Some node flags stop a thread from starting (--input-type, as in 'node --input-type=module -e ...').
      execArgv: [],
    });
    let settled = false;
    // A callback that throws stops the job as an abort does (training saves its state), and the job rejects with
    // that error once the worker has stopped: thrown from a message handler it would end the whole process.
    let callbackError: { error: unknown } | null = null;
    const onAbort = () => Atomics.store(flag, 0, 1);
    options.signal?.addEventListener('abort', onAbort, { once: true });
    const finish = (fn: () => void) => {
      if (settled) return;
      settled = true;
      options.signal?.removeEventListener('abort', onAbort);
      if (callbackError) reject(callbackError.error);
      else fn();
    };
    const callback = (fn: () => void) => {
      if (callbackError) return;
      try {
        fn();
      } catch (error) {
        callbackError = { error };
        onAbort();
      }
    };
    worker.on('message', (msg: { type: string; progress?: Progress; message?: string; value?: T; error?: { message: string; code?: string } }) => {
      if (msg.type === 'progress') callback(() => options.onProgress?.(msg.progress!));
      else if (msg.type === 'log') callback(() => options.onLog?.(msg.message!));
      else if (msg.type === 'result') finish(() => resolve(msg.value as T));
      else if (msg.type === 'error') {
        const e = msg.error!;
        finish(() => reject(e.code?.startsWith('ERR_TARFLOW') ? new TarflowError(e.code as TarflowErrorCode, e.message) : new Error(e.message)));
      }
    });
    worker.on('error', (err) => finish(() => reject(err)));
    worker.on('exit', (code) => finish(() => reject(new TarflowError('ERR_TARFLOW_NATIVE', `the ${task} worker exited with code ${code} before finishing`))));
  });
}

/** Trains a model (see TrainSpec); resolves when training, evaluation and the final sample grid are done. */
export function train(spec: TrainSpec, options?: JobOptions): Promise<TrainSummary> {
  return runJob('train', spec, options);
}

/** Samples images from a checkpoint to a PNG grid or a folder of PNGs. */
export function sample(spec: SampleSpec, options?: JobOptions): Promise<SampleSummary> {
  return runJob('sample', spec, options);
}

/** Dataset-average bits/dim of a checkpoint. */
export function evaluate(spec: EvaluateSpec, options?: JobOptions): Promise<{ bitsPerDim: number; images: number; seconds: number }> {
  return runJob('evaluate', spec, options);
}

/** Per-image bits/dim of the images in a .npy file. */
export function score(spec: ScoreSpec, options?: JobOptions): Promise<ScoreSummary> {
  return runJob('score', spec, options);
}

/** Writes `count` samples to disk in resumable shards (PNG files or .npz archives) with a manifest. */
export function generateToDisk(spec: GenerateSpec, options?: JobOptions): Promise<GenerateSummary> {
  return runJob('generate', spec, options);
}

/** kNN accuracy of class-conditional MNIST samples and their distance to the training set (see sample-quality.ts). */
export function evalSamples(spec: EvalSamplesSpec, options?: JobOptions): Promise<SampleQuality> {
  return runJob('eval-samples', spec, options);
}
