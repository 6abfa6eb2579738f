/**
 * The stream ids of the counter-based generator (native/common Philox), all in one table. A draw is a pure function
 * of (seed, stream, offset), which is what makes training resume exactly and sample k the same image at any batch
 * size; two kinds of draw that shared a stream id would draw the same numbers, so each has its own. The host's own
 * draws (the epoch's shuffle) are random.ts.
 */
export const STREAMS = {
  /** Training: the batch's Gaussian noise or uniform dequantization, offset by step and position. */
  trainingNoise: 11,
  /** Training: which labels a batch drops (classifier-free guidance's unconditional rows). */
  labelDrop: 12,
  /** Training: which images a batch flips horizontally. */
  flip: 13,
  /** Evaluation: bits/dim's uniform dequantization. */
  evalDequant: 21,
  /** Sampling: the latent noise, plus the redraw attempt (31 for the first draw, 32 for the first redraw, ...). */
  sampleLatent: 31,
  // 32 to 999: the redraws (MAX_REDRAWS)
  /** Initialisation: plus the parameter tensor's index in the layout (params.ts). */
  paramInit: 1000,
} as const;

/** The most redraws of one sample (maxRedraws, --max-redraws), so that its streams stay below paramInit's. */
export const MAX_REDRAWS = STREAMS.paramInit - STREAMS.sampleLatent - 1;
