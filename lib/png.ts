/**
 * PNG output for samples and data previews. Encoding goes through pngjs; images arrive as bytes (pixels.ts maps
 * model space to bytes).
 */
import { PNG } from 'pngjs';
import { writeFileAtomic } from './atomic.js';
import { TarflowError } from './errors.js';

// PNG allows up to 2^31-1 per side, but one Buffer (and pngjs) cannot hold more than this comfortably.
const MAX_PIXEL_BYTES = 1 << 30;

function invalid(message: string): TarflowError {
  return new TarflowError('ERR_TARFLOW_INVALID_ARGUMENT', message);
}

function positiveInt(v: unknown, what: string, fn: string): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0) {
    throw invalid(`${fn}: ${what} must be a positive integer, got ${String(v)}`);
  }
  return v;
}

/**
 * Encodes 8-bit grey (channels 1) or RGB (channels 3) pixels, row-major HWC, as a PNG of colour type 0 or 2.
 * Writing the matching colour type instead of RGBA keeps files a third to a quarter smaller.
 */
export function encodePng(pixels: Uint8Array, width: number, height: number, channels: 1 | 3): Uint8Array {
  positiveInt(width, 'width', 'encodePng');
  positiveInt(height, 'height', 'encodePng');
  if (channels !== 1 && channels !== 3) {
    throw invalid(`encodePng: channels must be 1 (grey) or 3 (RGB), got ${String(channels)}; convert the image first`);
  }
  if (!(pixels instanceof Uint8Array)) {
    throw invalid('encodePng: pixels must be a Uint8Array of HWC bytes (sampling returns its images as bytes)');
  }
  const expected = width * height * channels;
  if (expected > MAX_PIXEL_BYTES) {
    throw invalid(`encodePng: a ${width}x${height}x${channels} image (${expected} bytes) is too large to encode; write smaller images or fewer per grid`);
  }
  if (pixels.length !== expected) {
    throw new TarflowError('ERR_TARFLOW_SHAPE', `encodePng: ${width}x${height}x${channels} needs ${expected} pixel bytes but got ${pixels.length}; check width, height and channels`);
  }
  const colorType = channels === 1 ? 0 : 2;
  const png = new PNG({ width: 0, height: 0 });
  png.width = width;
  png.height = height;
  // pngjs takes the data as-is when input and output colour types match, so no RGBA copy is made
  png.data = Buffer.from(pixels.buffer, pixels.byteOffset, pixels.byteLength);
  const out = PNG.sync.write(png, { colorType, inputColorType: colorType, inputHasAlpha: false, bitDepth: 8 });
  return new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
}

/** Encodes and writes a PNG atomically. */
export async function writePng(path: string, pixels: Uint8Array, width: number, height: number, channels: 1 | 3): Promise<void> {
  await writeFileAtomic(path, encodePng(pixels, width, height, channels));
}

/**
 * Tiles `n` channel-first (CHW) uint8 images into one HWC image, row by row, with `pad` pixels of
 * `padValue` around and between tiles (default: ceil(sqrt(n)) columns, 2 pixels, black).
 */
export function imageGrid(
  images: Uint8Array,
  n: number,
  channels: number,
  height: number,
  width: number,
  opts: { cols?: number; pad?: number; padValue?: number } = {},
): { pixels: Uint8Array; width: number; height: number } {
  positiveInt(n, 'n', 'imageGrid');
  positiveInt(channels, 'channels', 'imageGrid');
  positiveInt(height, 'height', 'imageGrid');
  positiveInt(width, 'width', 'imageGrid');
  if (!(images instanceof Uint8Array)) {
    throw invalid('imageGrid: images must be a Uint8Array of N*C*H*W bytes, as sampling returns them');
  }
  const per = channels * height * width;
  if (images.length !== n * per) {
    throw new TarflowError('ERR_TARFLOW_SHAPE', `imageGrid: ${n} images of ${channels}x${height}x${width} need ${n * per} bytes but got ${images.length}; check n, channels, height and width`);
  }
  const cols = opts.cols === undefined ? Math.ceil(Math.sqrt(n)) : positiveInt(opts.cols, 'opts.cols', 'imageGrid');
  const pad = opts.pad ?? 2;
  if (!Number.isSafeInteger(pad) || pad < 0) throw invalid(`imageGrid: opts.pad must be a non-negative integer, got ${String(pad)}`);
  const padValue = opts.padValue ?? 0;
  if (!Number.isInteger(padValue) || padValue < 0 || padValue > 255) {
    throw invalid(`imageGrid: opts.padValue must be an integer in 0..255, got ${String(padValue)}`);
  }
  const usedCols = Math.min(cols, n);
  const rows = Math.ceil(n / cols);
  const outW = usedCols * (width + pad) + pad;
  const outH = rows * (height + pad) + pad;
  if (outW * outH * channels > MAX_PIXEL_BYTES) {
    throw invalid(`imageGrid: a ${outW}x${outH} grid is too large; show fewer images or use smaller padding`);
  }
  const pixels = new Uint8Array(outW * outH * channels).fill(padValue);
  const plane = height * width;
  for (let k = 0; k < n; k++) {
    const x0 = pad + (k % cols) * (width + pad);
    const y0 = pad + Math.floor(k / cols) * (height + pad);
    const base = k * per;
    for (let y = 0; y < height; y++) {
      let o = ((y0 + y) * outW + x0) * channels;
      const rowBase = base + y * width;
      for (let x = 0; x < width; x++) {
        for (let c = 0; c < channels; c++) pixels[o++] = images[rowBase + c * plane + x]!;
      }
    }
  }
  return { pixels, width: outW, height: outH };
}

/** Digits of the index in the names of `count` numbered image files: 6, or more where count - 1 has more, so names sort in image order. */
export function nameDigitsFor(count: number): number {
  return Math.max(6, String(count - 1).length);
}

/**
 * The PNG file of image `index` (its class in the name where the model has classes), for `generate` and for `sample
 * --out DIR` alike. A generate run's resume looks for its finished shards under these names, so they stay as they are.
 */
export function pngFileName(index: number, digits: number, label: number | undefined): string {
  return `${String(index).padStart(digits, '0')}${label === undefined ? '' : `-class${label}`}.png`;
}
