/**
 * What reduced precision does to samples (issue 4: "bf16 KV cache as an option with its accuracy measured").
 *
 * The shipped mnist-cond model draws the same images (same seed, so the same latents) four ways: fp32 throughout
 * (the reference), a bf16 KV cache, bf16 products, and both (the GPU's fast sampler); for each the table gives how
 * far its 8-bit images move from the reference and the kNN accuracy of its digits against the MNIST training set.
 * The CPU computes each variant exactly as the GPU's kernels do (bf16 rounding of the same values), so the
 * numbers hold on either device, up to the order of fp32 sums.
 */
import type { DeviceOption, Precision } from '../lib/backend.js';
import { loadModel } from '../lib/checkpoint.js';
import { loadMnist } from '../lib/data.js';
import { pretrainedPath, PRETRAINED } from '../lib/pretrained.js';
import { generate } from '../lib/sampling.js';
import { knnClassify } from '../lib/sample-quality.js';
import type { BenchRow, Measured } from './report.js';

interface Variant {
  name: string;
  precision: Precision;
  kvCache: Precision;
}

const VARIANTS: Variant[] = [
  { name: 'fp32 (reference)', precision: 'fp32', kvCache: 'fp32' },
  { name: 'bf16 KV cache', precision: 'fp32', kvCache: 'bf16' },
  { name: 'bf16 products', precision: 'bf16', kvCache: 'fp32' },
  { name: 'bf16 products and KV cache', precision: 'bf16', kvCache: 'bf16' },
];

export async function kvCacheAccuracy(device: DeviceOption, count: number, log: (line: string) => void): Promise<Measured> {
  const shipped = PRETRAINED['mnist-cond'];
  const path = pretrainedPath('mnist-cond');
  const train = await loadMnist('train');
  const dim = 28 * 28;
  const settings = [
    { label: `guidance ${shipped.guidance}, denoised (sigma ${shipped.sigma})`, guidance: shipped.guidance, denoiseSigma: shipped.sigma },
    { label: 'no guidance, not denoised', guidance: 0, denoiseSigma: undefined },
  ];
  const rows: BenchRow[] = [];
  const lines = [
    `${count} samples of mnist-cond (classes in turn, seed 0); pixel differences in 8-bit levels against fp32`,
    '',
    '| sampling | precision | pixels that differ | mean abs diff | max abs diff | kNN accuracy (k=3) |',
    '|---|---|---|---|---|---|',
  ];
  for (const s of settings) {
    let reference: Uint8Array | null = null;
    for (const v of VARIANTS) {
      log(`${s.label}: ${v.name}`);
      const model = await loadModel(path, { device, precision: v.precision });
      let images: Uint8Array, labels: Int32Array;
      try {
        const r = generate(model, { count, seed: 0, guidance: s.guidance, denoiseSigma: s.denoiseSigma, kvCache: v.kvCache });
        images = r.images;
        labels = r.labels!;
        const knn = knnClassify(model.backend, { images: train.images, labels: train.labels!, count: train.count, dim }, images, 3);
        let correct = 0;
        for (let i = 0; i < count; i++) if (knn.labels[i] === labels[i]) correct++;
        let differ = 0, sum = 0, max = 0;
        if (reference) {
          for (let i = 0; i < images.length; i++) {
            const d = Math.abs(images[i] - reference[i]);
            if (d) differ++;
            sum += d;
            max = Math.max(max, d);
          }
        } else {
          reference = images;
        }
        const n = images.length;
        const row: BenchRow = { part: 'kv-cache', name: `${s.label}: ${v.name}`, value: (100 * correct) / count, unit: '% kNN accuracy (k=3)', images: count };
        // The reference against itself would read as "no difference", which is not a measurement.
        if (v.precision !== 'fp32' || v.kvCache !== 'fp32') Object.assign(row, { pixels_differ_percent: (100 * differ) / n, mean_abs_diff: sum / n, max_abs_diff: max });
        rows.push(row);
        const diff = row.pixels_differ_percent === undefined
          ? ['-', '-', '-']
          : [`${row.pixels_differ_percent.toFixed(2)}%`, row.mean_abs_diff!.toFixed(3), String(row.max_abs_diff)];
        lines.push(`| ${s.label} | ${v.name} | ${diff.join(' | ')} | ${row.value.toFixed(1)}% |`);
      } finally {
        model.dispose();
      }
    }
  }
  return { rows, text: lines.join('\n') };
}
