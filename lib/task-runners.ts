/**
 * The long tasks by name: what the asynchronous API (jobs.ts) runs inline, and what its worker thread (worker.ts)
 * runs from the name it is sent. One table, apart from worker.ts, because importing worker.ts starts a task.
 */
import { runGenerate } from './batch-generate.js';
import { runEvalSamples } from './sample-quality.js';
import { runEvaluate, runSample, runScore, type TaskContext } from './tasks.js';
import { runTrain } from './train-task.js';

export const TASK_RUNNERS = {
  train: runTrain, sample: runSample, evaluate: runEvaluate, score: runScore, generate: runGenerate, 'eval-samples': runEvalSamples,
} as const;

export type TaskName = keyof typeof TASK_RUNNERS;

/** Runs the named task on this thread. */
export function runTask(task: TaskName, spec: unknown, ctx: TaskContext): Promise<unknown> {
  return (TASK_RUNNERS[task] as (s: unknown, c: TaskContext) => Promise<unknown>)(spec, ctx);
}
