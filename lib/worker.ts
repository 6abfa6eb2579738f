/**
 * Worker-thread entry: runs one task (see tasks.ts) off the caller's event loop, posting progress and the result.
 * The abort flag is shared memory, so the task sees a cancel between two steps without yielding to its own loop.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { runGenerate } from './batch-generate.js';
import { runEvalSamples } from './sample-quality.js';
import { runEvaluate, runSample, runScore, runTrain, type TaskContext } from './tasks.js';

export type TaskName = 'train' | 'sample' | 'evaluate' | 'score' | 'generate' | 'eval-samples';

interface WorkerInput {
  task: TaskName;
  spec: unknown;
  abortFlag: SharedArrayBuffer;
}

async function main(): Promise<void> {
  const { task, spec, abortFlag } = workerData as WorkerInput;
  const flag = new Int32Array(abortFlag);
  const ctx: TaskContext = {
    progress: (p) => parentPort!.postMessage({ type: 'progress', progress: p }),
    log: (message) => parentPort!.postMessage({ type: 'log', message }),
    aborted: () => Atomics.load(flag, 0) !== 0,
  };
  try {
    const runners = { train: runTrain, sample: runSample, evaluate: runEvaluate, score: runScore, generate: runGenerate, 'eval-samples': runEvalSamples } as const;
    const value = await (runners[task] as (s: unknown, c: TaskContext) => Promise<unknown>)(spec, ctx);
    parentPort!.postMessage({ type: 'result', value });
  } catch (err) {
    const e = err as Error & { code?: string };
    parentPort!.postMessage({ type: 'error', error: { message: e.message, code: e.code, name: e.name, stack: e.stack } });
  }
}

void main();
