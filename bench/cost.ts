/**
 * The work a TarFlow model does, counted from its config: the floors the GPU targets are measured against.
 *
 * Matrix products count 2 flops per multiply-add. Causal attention counts only the key positions a query sees
 * (query t attends to t + 1 keys), as FlashAttention's benchmarks do for causal masks. Element-wise work
 * (LayerNorm, GELU, softmax, coupling) is left out: it is memory traffic, not flops, and small beside the products.
 */
import { modelShape, type TarFlowConfig } from '../lib/config.js';

export interface ModelCost {
  /** Flops of the dense layers (qkv, proj, fc1, fc2, proj_in, proj_out) in one forward pass of one image. */
  denseFlops: number;
  /** Flops of the two attention products (scores and weighted values) in one forward pass of one image. */
  attentionFlops: number;
  /** One forward pass of one image. */
  forwardFlops: number;
  /** Forward and backward (gradients of inputs and weights) of one image: three forward passes. */
  trainFlops: number;
  /**
   * The denoising step's forward and backward to the input only: dense layers twice (no weight gradients),
   * attention three times (scores and values forward; four products backward, of which dQ and dK are new).
   */
  denoiseFlops: number;
  /** Key and value entries read from the KV cache by the exact sequential inverse of one image (all blocks). */
  kvReadsPerImage: number;
  /** Weights one token step reads (all layers of one block); a batch shares them. */
  weightsPerTokenStep: number;
}

export function modelCost(config: TarFlowConfig): ModelCost {
  const { tokens: T, patchDim: D, outDim, hidden } = modelShape(config);
  const W = config.channels, L = config.layersPerBlock, N = config.numBlocks;
  const denseWeightsPerLayer = 3 * W * W + W * W + 2 * W * hidden;
  const denseFlops = N * T * (L * 2 * denseWeightsPerLayer + 2 * D * W + 2 * W * outDim);
  // sum over queries t = 0..T-1 of (t + 1) keys, for Q K^T and for P V, each 2 * W flops per (query, key) pair
  const attentionFlops = N * L * 2 * 2 * W * ((T * (T + 1)) / 2);
  const forwardFlops = denseFlops + attentionFlops;
  return {
    denseFlops,
    attentionFlops,
    forwardFlops,
    trainFlops: 3 * forwardFlops,
    denoiseFlops: 2 * denseFlops + 3 * attentionFlops,
    // step t of a block reads keys and values (2 W values per layer) of the t + 1 tokens up to it
    kvReadsPerImage: N * L * 2 * W * ((T * (T + 1)) / 2),
    weightsPerTokenStep: L * denseWeightsPerLayer + D * W + W * outDim,
  };
}

/**
 * Flops of causal attention over B x H heads of T tokens and head size d, FlashAttention's convention: the forward
 * is the two products over the causal half; the backward is 2.5 forwards (five products of which one recomputes).
 */
export function attentionBenchFlops(B: number, H: number, T: number, d: number): { forward: number; forwardBackward: number } {
  const forward = (4 * B * H * T * T * d) / 2;
  return { forward, forwardBackward: 3.5 * forward };
}
