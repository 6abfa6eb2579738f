/**
 * A data loader worker (see loader.ts): prepares the batches the loader asks for and transfers them back.
 * A failure, even to start (the native addon not loading, say), is answered as an error reply, so the trainer
 * waiting for a batch always hears of it.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { BatchMaker, CONTROL, type Batch, type BatchReply, type BatchRequest, type WorkerSetup } from './loader.js';

const setup = workerData as WorkerSetup;
const control = new Int32Array(setup.control);

function reply(message: BatchReply): void {
  const transfer = message.kind === 'batch' ? [message.batch.images.buffer, message.batch.labels.buffer] : [];
  setup.replies.postMessage(message, transfer as ArrayBuffer[]);
  Atomics.add(control, CONTROL.replies, 1);
  Atomics.notify(control, CONTROL.replies);
}

function errorReply(err: unknown): BatchReply {
  const e = err as Error & { code?: unknown };
  return { kind: 'error', message: e?.message ?? String(err), code: typeof e?.code === 'string' ? e.code : undefined };
}

/**
 * Runs `work` (which calls into the native addon) unless the loader is closing, counted as busy meanwhile: the
 * count goes up before the flag is read, so the loader either waits for this call or this call sees the flag.
 */
function nativeWork<T>(work: () => T): T | undefined {
  Atomics.add(control, CONTROL.busy, 1);
  try {
    return Atomics.load(control, CONTROL.closing) === 0 ? work() : undefined;
  } finally {
    Atomics.sub(control, CONTROL.busy, 1);
    Atomics.notify(control, CONTROL.busy);
  }
}

let maker: BatchMaker | undefined;
let startError: BatchReply | null = null;
try {
  maker = nativeWork(() => new BatchMaker(setup.source, setup.recipe));
} catch (err) {
  startError = errorReply(err);
}

parentPort!.on('message', ({ step, generation }: BatchRequest) => {
  if (startError) return reply(startError);
  let batch: Batch | undefined;
  try {
    // A request from before the loader jumped to another step is skipped: its batch would be thrown away.
    batch = nativeWork(() => (generation === Atomics.load(control, CONTROL.generation) ? maker!.make(step) : undefined));
  } catch (err) {
    return reply(errorReply(err));
  }
  reply(batch ? { kind: 'batch', batch } : { kind: 'skipped' });
});
