/**
 * Worker-thread entry: runs one task (see task-runners.ts) off the caller's event loop, posting progress and the result.
 * The abort flag is shared memory, so the task sees a cancel between two steps without yielding to its own loop.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { runTask, type TaskName } from './task-runners.js';
import type { TaskContext } from './tasks.js';

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
    const value = await runTask(task, spec, ctx);
    parentPort!.postMessage({ type: 'result', value });
  } catch (err) {
    const e = err as Error & { code?: string };
    parentPort!.postMessage({ type: 'error', error: { message: e.message, code: e.code, name: e.name, stack: e.stack } });
  }
}

void main();
