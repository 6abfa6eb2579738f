/**
 * The training data loader: the epoch's shuffle, batching and augmentation (Gaussian noise or uniform
 * dequantization, label drop, horizontal flips), prepared ahead of the trainer on worker threads.
 *
 * A batch is a pure function of (data, options, step): each step's randomness is drawn from its own elements of
 * the counter-based streams, so neither the number of workers, nor the prefetch depth, nor which worker finished
 * first can change a batch, and a resumed run sees exactly the batches an uninterrupted one would.
 *
 * `batch(step)` is synchronous (the trainer's step is), so the consumer blocks with Atomics.wait and takes the
 * workers' replies with receiveMessageOnPort rather than from its event loop. A batch's memory is created by the
 * worker and transferred, so it is written once and never copied on the way.
 */
import { MessageChannel, receiveMessageOnPort, Worker, type MessagePort } from 'node:worker_threads';
import { availableParallelism } from 'node:os';
import { getBackend, type FloatDType, type Tensor } from './backend.js';
import type { ImageDataset } from './data.js';
import { epochPermutation } from './random.js';
import { TarflowError, type TarflowErrorCode } from './errors.js';
import type { TrainingNoise } from './model.js';
import { pixelLevels } from './pixels.js';
import { STREAMS } from './streams.js';
import { checkNumber } from './validate.js';


/** How batches are drawn and augmented (the training options of the same names). */
export interface AugmentOptions {
  batchSize: number;
  seed: number;
  /** 'gaussian': x + sigma * N(0, 1), pixels scaled by p/127.5 - 1; 'uniform': dequantization (p + U)/128 - 1. */
  noise: TrainingNoise;
  sigma: number;
  /** Probability that an image's label is replaced by -1 (only when labels are delivered). */
  labelDrop: number;
  hflip: boolean;
}

export interface LoaderOptions extends AugmentOptions {
  /** Element type of the images (default float32). */
  dtype?: FloatDType;
  /** Deliver the dataset's labels (default: when it has them); otherwise every label is -1. */
  labels?: boolean;
  /** Steps that will be asked for: nothing at or past it is prepared ahead (default: no end). */
  steps?: number;
  /** Worker threads preparing batches; 0 prepares each batch on the calling thread when asked (default: cores - 1, 1 to 4). */
  workers?: number;
  /** Batches prepared ahead of the one asked for (default: twice the workers, at least 2). */
  prefetch?: number;
  /** Aborting stops the workers; a later batch() throws ERR_TARFLOW_ABORTED. */
  signal?: AbortSignal;
  /**
   * Seconds batch() waits while no worker replies at all before it gives up on them (default 120; a batch takes
   * milliseconds). A worker that dies outside JavaScript (killed, out of memory) is otherwise never heard of: its
   * exit is an event, and the thread blocked in batch() runs no events.
   */
  stallSeconds?: number;
}

export interface Batch {
  step: number;
  /** batchSize x C x S x S values, channel-first. */
  images: Float32Array | Float64Array;
  /** One class per image, -1 where dropped or when labels are not delivered. */
  labels: Int32Array;
}

/** Which dataset images make each step's batch: epoch e is a shuffle of (seed, e); a partial last batch is skipped. */
export class EpochOrder {
  readonly stepsPerEpoch: number;
  private permutation: Uint32Array | null = null;
  private permutationEpoch = -1;

  constructor(readonly count: number, readonly batchSize: number, readonly seed: number) {
    this.stepsPerEpoch = Math.floor(count / batchSize);
  }

  /** The dataset indices of step `step` (a view, valid until a step of another epoch is asked for). */
  indices(step: number): Uint32Array {
    const epoch = Math.floor(step / this.stepsPerEpoch);
    if (epoch !== this.permutationEpoch) {
      this.permutation = epochPermutation(this.count, this.seed, epoch);
      this.permutationEpoch = epoch;
    }
    const start = (step % this.stepsPerEpoch) * this.batchSize;
    return this.permutation!.subarray(start, start + this.batchSize);
  }
}

/** What a batch is made from: the dataset's pixels and labels, in memory every worker can read. */
export interface BatchSource {
  images: Uint8Array;
  labels: Int32Array | null;
  count: number;
  channels: number;
  size: number;
}

export type BatchRecipe = Required<Pick<LoaderOptions, keyof AugmentOptions | 'dtype' | 'labels'>>;


/** Prepares batches (on a worker, or on the caller's thread when there are none), drawing noise on the CPU. */
export class BatchMaker {
  private readonly order: EpochOrder;
  private readonly per: number;
  private readonly noise: Tensor;
  private readonly draws: Tensor;

  constructor(private readonly source: BatchSource, private readonly recipe: BatchRecipe) {
    const { Tensor } = getBackend('cpu');
    this.order = new EpochOrder(source.count, recipe.batchSize, recipe.seed);
    this.per = source.channels * source.size * source.size;
    this.noise = new Tensor(recipe.dtype, [recipe.batchSize * this.per]);
    this.draws = new Tensor('float64', [recipe.batchSize]);
  }

  /** Uniform draws, one per image of step s, from `stream`. */
  private perImage(stream: number, s: number): Float64Array {
    getBackend('cpu').ops.uniform(this.draws, this.recipe.seed, stream, s * this.recipe.batchSize);
    return this.draws.toArray() as Float64Array;
  }

  make(step: number): Batch {
    const r = this.recipe;
    const { ops } = getBackend('cpu');
    const B = r.batchSize, per = this.per, S = this.source.size, rows = this.source.channels * S;
    const idx = this.order.indices(step);
    const flips = r.hflip ? this.perImage(STREAMS.flip, step) : null;
    // The noise array becomes the batch: pixels are added into it in place, and it is what gets transferred.
    let x: Float32Array | Float64Array;
    let scale: number;
    if (r.noise === 'uniform' || r.sigma > 0) {
      ops[r.noise === 'uniform' ? 'uniform' : 'normal'](this.noise, r.seed, STREAMS.trainingNoise, step * B * per);
      x = this.noise.toArray() as Float32Array | Float64Array;
      scale = r.noise === 'uniform' ? 1 / 128 : r.sigma;
    } else {
      x = r.dtype === 'float32' ? new Float32Array(B * per) : new Float64Array(B * per);
      scale = 0;
    }
    const lut = pixelLevels(r.noise);
    const src = this.source.images;
    for (let b = 0; b < B; b++) {
      const base = idx[b] * per;
      const out = b * per;
      if (flips !== null && flips[b] < 0.5) {
        for (let row = 0; row < rows; row++) {
          const from = base + row * S + S - 1, to = out + row * S;
          for (let col = 0; col < S; col++) x[to + col] = lut[src[from - col]] + scale * x[to + col];
        }
      } else {
        for (let i = 0; i < per; i++) x[out + i] = lut[src[base + i]] + scale * x[out + i];
      }
    }
    const labels = new Int32Array(B).fill(-1);
    const dataLabels = this.source.labels;
    if (r.labels && dataLabels) {
      const drops = r.labelDrop > 0 ? this.perImage(STREAMS.labelDrop, step) : null;
      for (let b = 0; b < B; b++) if (drops === null || drops[b] >= r.labelDrop) labels[b] = dataLabels[idx[b]];
    }
    return { step, images: x, labels };
  }

  dispose(): void {
    this.noise.dispose();
    this.draws.dispose();
  }
}

/** What a worker is started with (workerData). */
export interface WorkerSetup {
  source: BatchSource;
  recipe: BatchRecipe;
  /** Int32 words, indexed by CONTROL. */
  control: SharedArrayBuffer;
  replies: MessagePort;
}

/** The words of the control memory the loader shares with its workers. */
export const CONTROL = {
  /** Replies posted: the consumer sleeps on it. */
  replies: 0,
  /** The consumer's current generation: workers skip requests from older ones. */
  generation: 1,
  /** Workers inside native calls; a thread is terminated only when this is 0 (see Threads.stop). */
  busy: 2,
  /** Set once the loader stops: workers start no native call after it. */
  closing: 3,
  length: 4,
} as const;

export interface BatchRequest {
  step: number;
  generation: number;
}

export type BatchReply =
  | { kind: 'batch'; batch: Batch }
  | { kind: 'skipped' }
  | { kind: 'error'; message: string; code?: string };

// Pixels copied into shared memory once per dataset, so that every loader over it (and every worker) reads one copy.
const sharedCopies = new WeakMap<object, Uint8Array | Int32Array>();

function shared<T extends Uint8Array | Int32Array>(a: T): T {
  if (a.buffer instanceof SharedArrayBuffer) return a;
  let copy = sharedCopies.get(a) as T | undefined;
  if (!copy) {
    copy = new (a.constructor as new (b: SharedArrayBuffer) => T)(new SharedArrayBuffer(a.byteLength));
    copy.set(a);
    sharedCopies.set(a, copy);
  }
  return copy;
}

function defaultWorkers(): number {
  return Math.max(1, Math.min(4, availableParallelism() - 1));
}

/**
 * The worker threads and what must outlive the loader object to stop them (the finalizer's and the event
 * handlers' state): nothing here refers back to the loader, so an abandoned loader can be collected.
 */
class Threads {
  /** Threads not yet stopped: stopped when the process (or the thread owning them) exits. */
  private static live: Set<Threads> | null = null;

  readonly workers: Worker[] = [];
  readonly ports: MessagePort[] = [];
  /** A worker that failed outside a request (it could not start, or it died). */
  failure: TarflowError | null = null;
  readonly closed: Promise<void>;
  private readonly control: Int32Array;
  private stopping = false;

  constructor(count: number, setup: Omit<WorkerSetup, 'replies'>) {
    this.control = new Int32Array(setup.control);
    if (!Threads.live) {
      const live = (Threads.live = new Set());
      process.once('exit', () => { for (const threads of live) threads.stop(); });
    }
    Threads.live.add(this);
    const exits: Promise<void>[] = [];
    try {
      for (let w = 0; w < count; w++) {
        const { port1, port2 } = new MessageChannel();
        const worker = new Worker(new URL('./loader-worker.js', import.meta.url), {
          workerData: { ...setup, replies: port2 } satisfies WorkerSetup,
          transferList: [port2],
          // The worker needs none of the process's node flags, and some stop a thread from starting at all
          // (--input-type, as in 'node --input-type=module -e ...'), a failure the waiting trainer would never hear of.
          execArgv: [],
        });
        // Never what keeps a process alive: a loader that is not disposed must not stop the program from ending.
        worker.unref();
        worker.on('error', (err) => this.fail(`a data loader worker failed: ${err.message}`));
        exits.push(new Promise((resolve) => worker.once('exit', (code) => {
          if (!this.stopping) this.fail(`a data loader worker exited (code ${code})`);
          resolve();
        })));
        this.workers.push(worker);
        this.ports.push(port1);
      }
    } catch (err) {
      this.stop();
      throw new TarflowError('ERR_TARFLOW_NATIVE', `could not start the data loader's threads: ${(err as Error).message}`, { cause: err });
    }
    this.closed = Promise.all(exits).then(() => undefined);
  }

  private fail(message: string): void {
    this.failure ??= new TarflowError('ERR_TARFLOW_NATIVE', message);
  }

  /**
   * Ends the threads. A thread terminated inside a native call aborts the process (the addon cannot throw into
   * a terminating thread), so this first waits for the batches being made to finish: at most one per worker.
   */
  stop(): void {
    if (this.stopping) return;
    this.stopping = true;
    Threads.live!.delete(this);
    Atomics.store(this.control, CONTROL.closing, 1);
    // Bounded: a worker that died inside a native call never lowers the count, and then there is nothing to wait for.
    const deadline = performance.now() + STOP_WAIT_MS;
    for (let busy; (busy = Atomics.load(this.control, CONTROL.busy)) !== 0 && performance.now() < deadline;) {
      Atomics.wait(this.control, CONTROL.busy, busy, WAIT_SLICE_MS);
    }
    for (const worker of this.workers) void worker.terminate();
    for (const port of this.ports) port.close();
  }
}

const abandoned = new FinalizationRegistry<Threads>((threads) => threads.stop());

/** batch() waits in slices this long, to notice silence and suspension (see LoaderOptions.stallSeconds). */
const WAIT_SLICE_MS = 1000;
/** The longest stop() waits for batches being made (one takes milliseconds). */
const STOP_WAIT_MS = 30_000;

/**
 * Prepares the batches of one training run ahead of time; see the module comment. The augmentation options are
 * taken as given: the trainer passes them checked (resolveTrainOptions).
 */
export class BatchLoader {
  readonly stepsPerEpoch: number;
  /** Threads preparing batches (0: batches are made on the calling thread). */
  readonly workers: number;
  /** Resolves once every worker thread has ended (after dispose, abort or a failure). */
  readonly closed: Promise<void>;
  private readonly prefetch: number;
  private readonly end: number;
  private readonly maker: BatchMaker | null = null;
  private readonly threads: Threads | null = null;
  private readonly control: Int32Array;
  private readonly signal: AbortSignal | undefined;
  private readonly onAbort = () => this.dispose();
  /** Steps asked of the workers and not yet taken, with their batch once it has arrived. */
  private readonly pending = new Map<number, Batch | null>();
  private readonly outstanding: number[];
  private nextRequest = 0;
  private generation = 0;
  private failure: TarflowError | null = null;
  private disposed = false;
  private readonly stallMs: number;

  constructor(data: ImageDataset, options: LoaderOptions) {
    const workers = (this.workers = checkNumber('workers', options.workers ?? defaultWorkers(), { integer: true, min: 0, max: 64 }));
    this.stallMs = 1000 * checkNumber('stallSeconds', options.stallSeconds ?? 120, { above: 0 });
    this.prefetch = checkNumber('prefetch', options.prefetch ?? Math.max(2, 2 * workers), { integer: true, min: 1, max: 64 });
    this.end = options.steps ?? Infinity;
    this.stepsPerEpoch = Math.floor(data.count / options.batchSize);
    const recipe: BatchRecipe = {
      batchSize: options.batchSize, seed: options.seed, noise: options.noise, sigma: options.sigma, labelDrop: options.labelDrop,
      hflip: options.hflip, dtype: options.dtype ?? 'float32', labels: options.labels ?? data.labels !== null,
    };
    const source: BatchSource = { images: data.images, labels: data.labels, count: data.count, channels: data.channels, size: data.size };
    this.control = new Int32Array(new SharedArrayBuffer(CONTROL.length * 4));
    this.outstanding = new Array<number>(workers).fill(0);
    if (workers === 0) {
      this.maker = new BatchMaker(source, recipe);
      this.closed = Promise.resolve();
    } else {
      const sharedSource = { ...source, images: shared(source.images), labels: source.labels && shared(source.labels) };
      this.threads = new Threads(workers, { source: sharedSource, recipe, control: this.control.buffer as SharedArrayBuffer });
      this.closed = this.threads.closed;
      abandoned.register(this, this.threads, this);
    }
    this.signal = options.signal;
    this.signal?.addEventListener('abort', this.onAbort, { once: true });
  }

  /** The batch of step `step`, waiting for it if it is not ready; the next steps are prepared meanwhile. */
  batch(step: number): Batch {
    checkNumber('step', step, { integer: true, min: 0, below: this.end });
    this.checkUsable();
    if (this.maker) return this.maker.make(step);
    if (!this.pending.has(step)) this.restartAt(step);
    this.topUp();
    let quietSince = performance.now();
    for (;;) {
      // Read before taking replies: a reply posted after the read makes the wait return at once.
      const seen = Atomics.load(this.control, CONTROL.replies);
      this.takeReplies();
      this.checkUsable();
      const batch = this.pending.get(step);
      if (batch) {
        this.pending.delete(step);
        this.topUp();
        return batch;
      }
      const before = performance.now();
      const woke = Atomics.wait(this.control, CONTROL.replies, seen, WAIT_SLICE_MS) !== 'timed-out';
      const now = performance.now();
      // A slice that lasted far longer than asked means the process itself was stopped (a suspended laptop, a
      // debugger), not the workers: the clock of silence starts again.
      if (woke || now - before > 5 * WAIT_SLICE_MS) quietSince = now;
      else if (now - quietSince > this.stallMs) {
        this.failure = new TarflowError('ERR_TARFLOW_NATIVE', `the data loader's ${this.workers} worker thread(s) sent nothing for ` +
          `${Math.round((now - quietSince) / 1000)} s while batch ${step} was awaited: a worker has probably died (out of memory?). ` +
          'Run with fewer or no loader workers (workers: 0), or free memory, and resume.');
        this.checkUsable();
      }
    }
  }

  /** Stops the workers (idempotent). */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.signal?.removeEventListener('abort', this.onAbort);
    this.maker?.dispose();
    if (this.threads) {
      abandoned.unregister(this);
      this.threads.stop();
    }
    this.pending.clear();
  }

  private checkUsable(): void {
    if (this.signal?.aborted) {
      this.dispose();
      throw new TarflowError('ERR_TARFLOW_ABORTED', 'the data loader was aborted');
    }
    this.failure ??= this.threads?.failure ?? null;
    if (this.failure) {
      this.dispose();
      throw this.failure;
    }
    if (this.disposed) throw new TarflowError('ERR_TARFLOW_DISPOSED', 'the data loader has been disposed');
  }

  /**
   * A step that was not asked for ahead (a resumed run, a jump): the steps asked for before are forgotten, and
   * the workers skip those they have not started.
   */
  private restartAt(step: number): void {
    this.generation++;
    Atomics.store(this.control, CONTROL.generation, this.generation);
    this.pending.clear();
    this.nextRequest = step;
  }

  /** Asks for the next steps until `prefetch` are in flight or ready. */
  private topUp(): void {
    while (this.pending.size < this.prefetch && this.nextRequest < this.end) {
      const step = this.nextRequest++;
      const w = this.outstanding.indexOf(Math.min(...this.outstanding));
      this.threads!.workers[w].postMessage({ step, generation: this.generation } satisfies BatchRequest);
      this.outstanding[w]++;
      this.pending.set(step, null);
    }
  }

  private takeReplies(): void {
    this.threads!.ports.forEach((port, w) => {
      for (let m; (m = receiveMessageOnPort(port)) !== undefined;) {
        const reply = m.message as BatchReply;
        this.outstanding[w]--;
        if (reply.kind === 'error') {
          const code = reply.code?.startsWith('ERR_TARFLOW') ? (reply.code as TarflowErrorCode) : 'ERR_TARFLOW_NATIVE';
          this.failure ??= new TarflowError(code, `data loader worker: ${reply.message}`);
        } else if (reply.kind === 'batch' && this.pending.get(reply.batch.step) === null) {
          // A batch asked for before a restart is as good as a new one: it depends on its step alone.
          this.pending.set(reply.batch.step, reply.batch);
        }
      }
    });
  }
}
