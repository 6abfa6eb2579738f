/**
 * CIFAR-10 in its binary distribution (cifar-10-batches-bin): files of records, each one label byte followed by
 * 3072 pixel bytes — the red, green and blue 32 x 32 planes in turn, which is already channel-first.
 * `data_batch_1.bin` .. `data_batch_5.bin` are the training split, `test_batch.bin` the test split.
 */
import { readdir } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { readFileForParsing, statFileForParsing } from './read-file.js';
import { TarflowError } from './errors.js';

export const CIFAR_SIZE = 32;
export const CIFAR_CHANNELS = 3;
const PIXELS = CIFAR_CHANNELS * CIFAR_SIZE * CIFAR_SIZE;
const RECORD = 1 + PIXELS;
/**
 * 4 GiB: the largest Buffer on Node.js 20, the oldest this package supports; kept on later versions (which allow
 * more) so that a dataset that loads on one supported version loads on all.
 */
const MAX_BUFFER_BYTES = 2 ** 32;

/** The class names in label order, as listed in the distribution's batches.meta.txt. */
export const CIFAR10_CLASSES: readonly string[] = ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck'];

const TRAIN_BATCH = /^data_batch_(\d+)\.bin$/i;
const TEST_BATCH = /^test_batch\.bin$/i;

export function isCifarBatchName(path: string): boolean {
  const name = basename(path);
  return TRAIN_BATCH.test(name) || TEST_BATCH.test(name);
}

export interface CifarBatch {
  /** count * 3072 bytes, (N, 3, 32, 32). */
  images: Uint8Array;
  labels: Int32Array;
  count: number;
}

/** Parses one CIFAR-10 binary batch held in memory. */
export function parseCifarBatch(buf: Uint8Array, name = 'CIFAR batch'): CifarBatch {
  if (buf.length === 0 || buf.length % RECORD !== 0) {
    // CIFAR-100's binary records carry two label bytes (coarse, fine), so they are 3074 bytes long
    const hint = buf.length > 0 && buf.length % (RECORD + 1) === 0 ? 'its length fits 3074-byte CIFAR-100 records, which are not supported; convert them to .npz'
      : buf.length === 0 ? 'the file is empty' : `the last record is cut short after ${buf.length % RECORD} bytes; the file is truncated — download and extract it again`;
    throw new TarflowError('ERR_TARFLOW_FILE_FORMAT', `${name}: ${buf.length} bytes is not a whole number of ${RECORD}-byte CIFAR-10 records (1 label byte + 3072 pixels); ${hint}`);
  }
  const count = buf.length / RECORD;
  const images = new Uint8Array(count * PIXELS);
  const labels = new Int32Array(count);
  for (let i = 0; i < count; i++) {
    const label = buf[i * RECORD]!;
    if (label >= CIFAR10_CLASSES.length) {
      throw new TarflowError('ERR_TARFLOW_DATA', `${name}: record ${i} has label ${label}, but CIFAR-10 labels are 0..9; the file is corrupt or not a CIFAR-10 batch`);
    }
    labels[i] = label;
    images.set(buf.subarray(i * RECORD + 1, (i + 1) * RECORD), i * PIXELS);
  }
  return { images, labels, count };
}

/** Reads one batch file. */
export async function readCifarBatch(path: string): Promise<CifarBatch> {
  return parseCifarBatch(await readFileForParsing(path, 'CIFAR-10 batch'), path);
}

/**
 * The batch files of `split` in a folder (training batches in numeric order), or null when the folder holds no
 * CIFAR-10 batch at all, so that the caller can treat it as an image folder instead.
 */
export async function cifarBatchFiles(dir: string, split: 'train' | 'test'): Promise<string[] | null> {
  const names = await readdir(dir);
  const train = names.filter((n) => TRAIN_BATCH.test(n)).sort((a, b) => Number(TRAIN_BATCH.exec(a)![1]) - Number(TRAIN_BATCH.exec(b)![1]));
  const test = names.filter((n) => TEST_BATCH.test(n));
  if (train.length === 0 && test.length === 0) return null;
  const chosen = split === 'train' ? train : test;
  if (chosen.length === 0) {
    const want = split === 'train' ? 'data_batch_1.bin .. data_batch_5.bin' : 'test_batch.bin';
    throw new TarflowError('ERR_TARFLOW_DATA', `${dir}: holds CIFAR-10 batches but none of the ${split} split (${want}); extract the whole cifar-10-binary.tar.gz there, or pass a batch file itself`);
  }
  return chosen.map((n) => join(dir, n));
}

/** Reads and concatenates batch files. */
export async function readCifarBatches(files: readonly string[]): Promise<CifarBatch> {
  // Sized from the files before any is read: each may be up to 2 GB, and the batches are joined into one buffer.
  let records = 0;
  for (const f of files) records += Math.floor((await statFileForParsing(f, 'CIFAR-10 batch')).size / RECORD);
  if (records * PIXELS > MAX_BUFFER_BYTES) {
    throw new TarflowError('ERR_TARFLOW_DATA', `${dirname(files[0]!)}: ${files.length} batch files hold ${records} images of ${CIFAR_CHANNELS} x ${CIFAR_SIZE} x ${CIFAR_SIZE}, ` +
      `${(records * PIXELS / 2 ** 30).toFixed(1)} GiB, more than one buffer can hold (4 GiB); pass one batch file, or move the extra batches out of the folder`);
  }
  const parts: CifarBatch[] = [];
  for (const f of files) parts.push(await readCifarBatch(f));
  if (parts.length === 1) return parts[0]!;
  const count = parts.reduce((a, p) => a + p.count, 0);
  const images = new Uint8Array(count * PIXELS);
  const labels = new Int32Array(count);
  let at = 0;
  for (const p of parts) {
    images.set(p.images, at * PIXELS);
    labels.set(p.labels, at);
    at += p.count;
  }
  return { images, labels, count };
}
