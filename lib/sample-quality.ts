/**
 * Sample quality without downloaded networks: class-conditional MNIST samples are classified by k nearest
 * neighbours over the MNIST training set (no learned weights, so nothing to download or trust), and each
 * sample's distance to its nearest training image shows whether the model copies its training data.
 *
 * Distances come from ||q||^2 + ||r||^2 - 2 q.r, the cross term on the backend's GEMM (`linear`), in blocks so
 * memory stays bounded whatever the number of queries. The float32 GEMM only screens candidates; the few
 * nearest are re-ranked with exact integer distances on the host, so a copied image is at distance exactly 0
 * and the result does not depend on the blocking.
 */
import { PRECISIONS, type Backend, type DeviceOption, type Precision, type Tensor } from './backend.js';
import { loadModel } from './checkpoint.js';
import { loadMnist, type ImageDataset } from './data.js';
import { TarflowError } from './errors.js';
import { REVERSE_OPTIONS, checkModel, type ReverseOptions, type TarFlow } from './model.js';
import { checkDenoisable, defaultTemperature, generate, resolveGenerateOptions } from './sampling.js';
import { checkArray, checkCallback, checkKnownKeys, checkLength, checkNumber, checkObject, checkOneOf, checkSignal, optional, validationError, optionNames, type OptionNames } from './validate.js';
import { RateMeter, abortSignalOf, checkCheckpointSpec, type TaskContext } from './tasks.js';

export interface KnnReference {
  /** count * dim bytes, one image after another. */
  images: Uint8Array;
  labels: Int32Array;
  count: number;
  /** Pixels per image. */
  dim: number;
}

export interface KnnOptions {
  /** Queries per GEMM block (default 512). */
  queryBlock?: number;
  /** References per GEMM block (default 8192); the block's scores are queryBlock x referenceBlock floats. */
  referenceBlock?: number;
  onProgress?: (done: number, total: number) => void;
  signal?: AbortSignal;
}

const KNN_OPTIONS = { queryBlock: true, referenceBlock: true, onProgress: true, signal: true } as const satisfies OptionNames<KnnOptions>;

export interface KnnResult {
  /** The majority label of the k nearest references; a tie goes to the tied class with the nearest member. */
  labels: Int32Array;
  /** Euclidean distance to the nearest reference, with pixels scaled to [0, 1]. */
  nearestDistance: Float64Array;
  /** Index of the nearest reference (the lower index when several are equally near). */
  nearestIndex: Int32Array;
}

// Candidates kept per query beyond k: float32 rounding in the GEMM can swap references whose distances differ
// by a few parts in 1e6, so a margin of extra candidates makes the exact re-rank see the true k nearest.
const CANDIDATE_MARGIN = 16;

const positiveInt = (name: string, v: unknown) => checkNumber(name, v, { integer: true, min: 1 });

/** Exact squared distance in 0..255 pixel units (an integer, at most dim * 255^2). */
function exactSquaredDistance(a: Uint8Array, aOff: number, b: Uint8Array, bOff: number, dim: number): number {
  let s = 0;
  for (let i = 0; i < dim; i++) {
    const d = a[aOff + i] - b[bOff + i];
    s += d * d;
  }
  return s;
}

function sumSquaresBytes(x: Uint8Array, off: number, dim: number): number {
  let s = 0;
  for (let i = 0; i < dim; i++) s += x[off + i] * x[off + i];
  return s;
}

/** Copies images [start, start+n) into a float32 tensor, chunk by chunk so the host never holds them all as floats. */
function uploadImages(backend: Backend, images: Uint8Array, start: number, n: number, dim: number): Tensor {
  const t = new backend.Tensor('float32', [n, dim]);
  const chunk = 4096;
  try {
    for (let s = 0; s < n; s += chunk) {
      const m = Math.min(chunk, n - s);
      // Raw 0..255 values: exactly representable, so every product in the GEMM is exact too.
      const host = new Float32Array(images.subarray((start + s) * dim, (start + s + m) * dim));
      const v = t.view(s * dim, [m, dim]);
      try {
        v.copyFrom(host);
      } finally {
        v.dispose();
      }
    }
  } catch (err) {
    t.dispose();
    throw err;
  }
  return t;
}

/**
 * Classifies `queries` (uint8 images of `reference.dim` pixels each) by their k nearest references in squared
 * Euclidean distance, and reports each query's nearest reference and its distance.
 */
export function knnClassify(backend: Backend, reference: KnnReference, queries: Uint8Array, k = 3, opts: KnnOptions = {}): KnnResult {
  checkObject('reference', reference);
  const { images: refImages, labels: refLabels, count: R, dim } = reference;
  positiveInt('reference.dim', dim);
  positiveInt('reference.count', R);
  checkLength('reference.images', checkArray('reference.images', refImages, [Uint8Array]), R * dim, `${R} images of ${dim} pixels = ${R * dim} bytes`);
  checkLength('reference.labels', checkArray('reference.labels', refLabels, [Int32Array]), R, `${R} labels (one per image)`);
  checkArray('queries', queries, [Uint8Array]);
  if (queries.length % dim !== 0) {
    throw validationError('ERR_TARFLOW_SHAPE', 'queries', `a whole number of ${dim}-pixel images`, `${queries.length} bytes`, "pass images of the reference's size");
  }
  checkNumber('k', k, { integer: true, min: 1, max: R }, 'ERR_TARFLOW_INVALID_ARGUMENT');
  checkObject('options', opts);
  checkKnownKeys('options', opts, KNN_OPTIONS);
  checkCallback('onProgress', opts.onProgress);
  checkSignal('signal', opts.signal);
  // No block needs more rows than there are queries: a huge queryBlock would otherwise size its buffers by itself.
  const queryBlock = Math.min(positiveInt('queryBlock', opts.queryBlock ?? 512), Math.max(1, queries.length / dim));
  const referenceBlock = Math.min(positiveInt('referenceBlock', opts.referenceBlock ?? 8192), R);

  const Q = queries.length / dim;
  const result: KnnResult = { labels: new Int32Array(Q), nearestDistance: new Float64Array(Q), nearestIndex: new Int32Array(Q) };
  if (Q === 0) return result;
  const m = Math.min(R, k + CANDIDATE_MARGIN);

  // The bias adds -||r||^2 / 2, so the GEMM yields q.r - ||r||^2/2 = (||q||^2 - d^2) / 2: larger is nearer and
  // ||q||^2, constant along a row, never needs computing.
  const halfNorms = new Float32Array(R);
  for (let r = 0; r < R; r++) halfNorms[r] = -0.5 * sumSquaresBytes(refImages, r * dim, dim);

  const candScore = new Float64Array(queryBlock * m);
  const candIdx = new Int32Array(queryBlock * m);
  const exact: Array<{ d: number; i: number }> = Array.from({ length: m }, () => ({ d: 0, i: 0 }));
  let refTensor: Tensor | undefined, biasTensor: Tensor | undefined, scoreTensor: Tensor | undefined;
  try {
    refTensor = uploadImages(backend, refImages, 0, R, dim);
    biasTensor = new backend.Tensor('float32', [R], halfNorms);
    // One score buffer for every block (the last blocks use a prefix of it).
    scoreTensor = new backend.Tensor('float32', [Math.min(queryBlock, Q) * referenceBlock]);
    for (let q0 = 0; q0 < Q; q0 += queryBlock) {
      if (opts.signal?.aborted) throw new TarflowError('ERR_TARFLOW_ABORTED', 'the nearest-neighbour search was aborted');
      const nq = Math.min(queryBlock, Q - q0);
      candScore.fill(-Infinity);
      candIdx.fill(-1);
      const qTensor = uploadImages(backend, queries, q0, nq, dim);
      try {
        for (let r0 = 0; r0 < R; r0 += referenceBlock) {
          const nr = Math.min(referenceBlock, R - r0);
          const w = refTensor.view(r0 * dim, [nr, dim]);
          const b = biasTensor.view(r0, [nr]);
          const y = scoreTensor.view(0, [nq, nr]);
          let scores: Float32Array;
          try {
            backend.ops.linear(y, qTensor, w, b, false);
            scores = y.toArray() as Float32Array;
          } finally {
            y.dispose();
            w.dispose();
            b.dispose();
          }
          keepBest(scores, nq, nr, r0, m, candScore, candIdx);
        }
      } finally {
        qTensor.dispose();
      }
      for (let qi = 0; qi < nq; qi++) {
        const q = q0 + qi;
        for (let c = 0; c < m; c++) {
          const i = candIdx[qi * m + c];
          exact[c].i = i;
          exact[c].d = exactSquaredDistance(queries, q * dim, refImages, i * dim, dim);
        }
        exact.sort((a, b) => a.d - b.d || a.i - b.i);
        result.nearestIndex[q] = exact[0].i;
        result.nearestDistance[q] = Math.sqrt(exact[0].d) / 255;
        result.labels[q] = vote(exact, k, refLabels);
      }
      opts.onProgress?.(Math.min(q0 + nq, Q), Q);
    }
  } finally {
    refTensor?.dispose();
    biasTensor?.dispose();
    scoreTensor?.dispose();
  }
  return result;
}

/**
 * Merges a block of scores (nq rows of nr, larger is nearer) into each row's m best, kept sorted in descending
 * order in candScore/candIdx. A small function of its own so the hot loop stays optimised.
 */
function keepBest(scores: Float32Array, nq: number, nr: number, r0: number, m: number, candScore: Float64Array, candIdx: Int32Array): void {
  for (let qi = 0; qi < nq; qi++) {
    const base = qi * m;
    const row = qi * nr;
    let threshold = candScore[base + m - 1];
    for (let j = 0; j < nr; j++) {
      const s = scores[row + j];
      if (!(s > threshold)) continue;
      // Insertion into the sorted list: rare after the first few hundred references of a row.
      let p = m - 1;
      while (p > 0 && candScore[base + p - 1] < s) {
        candScore[base + p] = candScore[base + p - 1];
        candIdx[base + p] = candIdx[base + p - 1];
        p--;
      }
      candScore[base + p] = s;
      candIdx[base + p] = r0 + j;
      threshold = candScore[base + m - 1];
    }
  }
}

/** Majority label of the first k (sorted nearest first); among tied labels, the one whose member comes first. */
function vote(sorted: Array<{ i: number }>, k: number, labels: Int32Array): number {
  const counts = new Map<number, number>();
  let best = labels[sorted[0].i];
  let bestCount = 0;
  for (let c = 0; c < k; c++) counts.set(labels[sorted[c].i], (counts.get(labels[sorted[c].i]) ?? 0) + 1);
  // Walking nearest first and replacing only on a strictly larger count keeps the nearest among tied labels.
  for (let c = 0; c < k; c++) {
    const l = labels[sorted[c].i];
    const n = counts.get(l)!;
    if (n > bestCount) {
      best = l;
      bestCount = n;
    }
  }
  return best;
}

export interface DistanceStats {
  mean: number;
  min: number;
  median: number;
}

function distanceStats(d: ArrayLike<number>): DistanceStats {
  const sorted = Float64Array.from(d).sort();
  const n = sorted.length;
  let sum = 0;
  for (let i = 0; i < n; i++) sum += sorted[i];
  const median = n % 2 ? sorted[(n - 1) >> 1] : (sorted[n / 2 - 1] + sorted[n / 2]) / 2;
  return { mean: sum / n, min: sorted[0], median };
}

export interface EvaluateSamplesOptions extends ReverseOptions {
  /** Samples to generate (default 1000); sample i has class i % 10. */
  count?: number;
  /** Denoise the samples with one score step at this noise level (the training sigma). */
  denoiseSigma?: number;
  /** Latent noise seed (default 0). */
  seed?: number;
  /** Scale of the latent noise (default 1; see GenerateOptions.temperature). */
  temperature?: number;
  /** Neighbours that vote (default 3). */
  k?: number;
  /** Images per sampling batch (default 256). */
  batchSize?: number;
  /** The MNIST training and test sets, when the caller already has them loaded. */
  train?: ImageDataset;
  test?: ImageDataset;
  knn?: Omit<KnnOptions, 'onProgress' | 'signal'>;
  onProgress?: (phase: 'sample' | 'classify', done: number, total: number) => void;
  signal?: AbortSignal;
}

const EVALUATE_SAMPLES_OPTIONS = optionNames<EvaluateSamplesOptions>()({
  ...REVERSE_OPTIONS, count: true, denoiseSigma: true, seed: true, temperature: true, k: true, batchSize: true, train: true, test: true, knn: true,
  onProgress: true, signal: true,
});

export interface SampleQuality {
  /** Samples generated and scored. */
  count: number;
  k: number;
  /** Fraction of samples whose kNN label is the class they were generated for. */
  accuracy: number;
  /** Accuracy per digit 0..9 (null for a digit with no samples, when count < 10). */
  perClassAccuracy: Array<number | null>;
  /** Euclidean distance of each sample to its nearest training image, pixels in [0, 1]. */
  nearestDistance: DistanceStats;
  /**
   * The same statistic for real held-out test images: samples much nearer the training set than this are
   * likely copies; samples much farther are likely off the data manifold.
   */
  trainingSetNearestBaseline: DistanceStats;
  /** kNN accuracy on the same real test images: the classifier's own ceiling (about 0.97 for k = 3). */
  testSetAccuracy: number;
  /** Real test images used for the baseline (the first min(count, 10000)). */
  testImages: number;
  /** Samples that came out NaN/Inf and were redrawn. */
  redraws: number;
  seconds: number;
}

/** Refuses models this evaluation cannot judge, naming what it needs. */
export function checkMnistConditional(model: TarFlow): void {
  checkModel(model);
  const { inChannels, imgSize, numClasses } = model.config;
  if (inChannels !== 1 || imgSize !== 28) {
    throw new TarflowError('ERR_TARFLOW_SHAPE',
      `eval-samples compares samples with MNIST digits (1 x 28 x 28), but the model makes ${inChannels} x ${imgSize} x ${imgSize} images; use a model trained on MNIST`);
  }
  if (numClasses !== 10) {
    throw new TarflowError('ERR_TARFLOW_INVALID_ARGUMENT',
      numClasses === 0
        ? 'eval-samples needs a class-conditional model (it checks that a sample of digit d looks like a d), but this model is unconditional; train without --unconditional'
        : `eval-samples needs a model conditioned on the 10 MNIST digits, but this one has ${numClasses} classes`);
  }
}

/**
 * Generates `count` class-conditional samples and scores them against MNIST: kNN accuracy (overall and per
 * digit) and the distance to the nearest training image, next to the same numbers for real test images.
 */
export async function evaluateSamples(model: TarFlow, options: EvaluateSamplesOptions = {}): Promise<SampleQuality> {
  checkMnistConditional(model);
  checkObject('options', options);
  checkKnownKeys('options', options, EVALUATE_SAMPLES_OPTIONS);
  checkCallback('onProgress', options.onProgress);
  checkSignal('signal', options.signal);
  const k = positiveInt('k', options.k ?? 3);
  const dim = 28 * 28;
  const sampling = {
    seed: options.seed, temperature: options.temperature, denoiseSigma: options.denoiseSigma,
    guidance: options.guidance, guideWhat: options.guideWhat, attnTemp: options.attnTemp, annealed: options.annealed,
    kvCache: options.kvCache,
  };
  // Checked before MNIST is read: generate() would only see them after.
  const { count, batchSize: batch } = resolveGenerateOptions({ ...sampling, count: options.count ?? 1000, batchSize: options.batchSize }, dim);
  checkDenoisable(model, 'denoiseSigma', sampling.denoiseSigma);
  const start = performance.now();
  const train = options.train ?? await loadMnist('train');
  const test = options.test ?? await loadMnist('test');
  for (const ds of [train, test]) {
    if (ds.channels !== 1 || ds.size !== 28 || !ds.labels) {
      throw new TarflowError('ERR_TARFLOW_DATA', `${ds.name} is not labelled 1 x 28 x 28 MNIST; pass the sets from loadMnist('train') and loadMnist('test')`);
    }
  }
  // The search's options are checked here too: knnClassify would see them only after every sample was drawn.
  checkNumber('k', k, { integer: true, min: 1, max: train.count });
  if (options.knn !== undefined) {
    checkObject('knn', options.knn);
    checkKnownKeys('knn', options.knn, { queryBlock: true, referenceBlock: true });
    optional(options.knn.queryBlock, (v) => positiveInt('knn.queryBlock', v));
    optional(options.knn.referenceBlock, (v) => positiveInt('knn.referenceBlock', v));
  }

  // Generated in batches so an abort lands between two of them; image i depends only on (seed, i).
  const samples = new Uint8Array(count * dim);
  let redraws = 0;
  for (let s = 0; s < count; s += batch) {
    if (options.signal?.aborted) throw new TarflowError('ERR_TARFLOW_ABORTED', 'sample evaluation was aborted');
    const n = Math.min(batch, count - s);
    const r = generate(model, { ...sampling, count: n, startIndex: s, batchSize: batch });
    samples.set(r.images, s * dim);
    redraws += r.redraws.length;
    options.onProgress?.('sample', s + n, count);
  }

  // Samples and real test images go through one search, so the training set is uploaded once.
  const nTest = Math.min(count, test.count);
  const queries = new Uint8Array((count + nTest) * dim);
  queries.set(samples);
  queries.set(test.images.subarray(0, nTest * dim), count * dim);
  const knn = knnClassify(model.backend, { images: train.images, labels: train.labels!, count: train.count, dim }, queries, k, {
    ...options.knn, signal: options.signal, onProgress: (done, total) => options.onProgress?.('classify', done, total),
  });

  const correct = new Array<number>(10).fill(0);
  const total = new Array<number>(10).fill(0);
  for (let i = 0; i < count; i++) {
    const want = i % 10;
    total[want]++;
    if (knn.labels[i] === want) correct[want]++;
  }
  let testCorrect = 0;
  for (let i = 0; i < nTest; i++) if (knn.labels[count + i] === test.labels![i]) testCorrect++;
  return {
    count, k,
    accuracy: correct.reduce((a, b) => a + b, 0) / count,
    perClassAccuracy: correct.map((c, d) => (total[d] ? c / total[d] : null)),
    nearestDistance: distanceStats(knn.nearestDistance.subarray(0, count)),
    trainingSetNearestBaseline: distanceStats(knn.nearestDistance.subarray(count)),
    testSetAccuracy: testCorrect / nTest,
    testImages: nTest,
    redraws,
    seconds: (performance.now() - start) / 1000,
  };
}

export interface EvalSamplesSpec extends ReverseOptions {
  /** A .safetensors file, or the name of a shipped model ('mnist-cond', 'mnist-bpd'; see loadModel). */
  checkpoint: string;
  /** Config for a checkpoint without metadata. */
  config?: Record<string, unknown>;
  /** Samples (default 1000). */
  count?: number;
  denoiseSigma?: number;
  seed?: number;
  /** Scale of the latent noise; default: defaultTemperature (0.7 for likelihood models, else 1). */
  temperature?: number;
  k?: number;
  batchSize?: number;
  device?: DeviceOption;
  /** Matrix products of the sampler (see ModelOptions.precision). */
  precision?: Precision;
}

const EVAL_SAMPLES_SPEC = optionNames<EvalSamplesSpec>()({
  ...REVERSE_OPTIONS, checkpoint: true, config: true, count: true, denoiseSigma: true, seed: true, temperature: true, k: true, batchSize: true,
  device: true, precision: true,
});

/** The 'eval-samples' task: loads the checkpoint and runs evaluateSamples with progress and abort. */
export async function runEvalSamples(spec: EvalSamplesSpec, ctx: TaskContext): Promise<SampleQuality> {
  checkObject('spec', spec);
  checkKnownKeys('spec', spec, EVAL_SAMPLES_SPEC); // first, so a misspelt checkpoint is named as such
  checkCheckpointSpec(spec);
  optional(spec.k, (v) => positiveInt('k', v));
  optional(spec.precision, (v) => checkOneOf('precision', v, PRECISIONS));
  resolveGenerateOptions({ ...spec, count: spec.count ?? 1000 }, 28 * 28);
  const model = await loadModel(spec.checkpoint, { device: spec.device, config: spec.config, precision: spec.precision });
  try {
    // One meter per phase: sampling and the search run at rates that have nothing to do with each other.
    let meter = new RateMeter();
    let current = 'sample';
    let lastReport = performance.now();
    return await evaluateSamples(model, {
      count: spec.count, guidance: spec.guidance, guideWhat: spec.guideWhat, attnTemp: spec.attnTemp, annealed: spec.annealed,
      kvCache: spec.kvCache, denoiseSigma: spec.denoiseSigma, seed: spec.seed, temperature: spec.temperature ?? defaultTemperature(model), k: spec.k,
      batchSize: spec.batchSize, signal: abortSignalOf(ctx),
      onProgress: (phase, done, total) => {
        if (phase !== current) {
          current = phase;
          meter = new RateMeter(0, lastReport); // this phase began when the last report of the previous one came
        }
        lastReport = performance.now();
        ctx.progress({ task: phase === 'sample' ? 'sample' : 'evaluate', done, total, ...meter.update(done, total) });
      },
    });
  } finally {
    model.dispose();
  }
}
