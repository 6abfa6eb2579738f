/**
 * Randomness drawn on the host: a small seeded PRNG and the epoch's shuffle, both pure functions of their seeds so
 * that a resumed run sees the same order. The model's own draws (noise, dequantization, sampling, initialisation)
 * come from the native counter-based generator, keyed by the stream ids in streams.ts.
 */

/** A small deterministic PRNG (mulberry32) for host-side choices such as the epoch's shuffle. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** The order of epoch `epoch` under `seed`: a Fisher-Yates shuffle that depends only on (seed, epoch). */
export function epochPermutation(count: number, seed: number, epoch: number): Uint32Array {
  const rand = seededRandom((Math.imul(seed >>> 0, 0x9e3779b1) ^ Math.imul(epoch + 1, 0x85ebca6b)) >>> 0);
  const p = new Uint32Array(count);
  for (let i = 0; i < count; i++) p[i] = i;
  for (let i = count - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    const t = p[i];
    p[i] = p[j];
    p[j] = t;
  }
  return p;
}
