/**
 * Parser for the IDX format of the original MNIST distribution: two zero bytes, a type code, a dimension
 * count, big-endian 32-bit dimensions, then the raw data. Only unsigned-byte files (labels and images) are
 * needed, so other element types are refused rather than half-supported.
 */
import { readFileForParsing } from './read-file.js';
import { TarflowError } from './errors.js';

export interface IdxArray {
  dims: number[];
  /** The raw bytes, a view into the parsed buffer. */
  data: Uint8Array;
}

const TYPE_NAMES: Readonly<Record<number, string>> = {
  0x08: 'unsigned byte',
  0x09: 'signed byte',
  0x0b: 'int16',
  0x0c: 'int32',
  0x0d: 'float32',
  0x0e: 'float64',
};

/**
 * Whether a file's first bytes are an IDX header of any element type: a reader that sends every such file to
 * parseIdx lets it say what is wrong with one it cannot read (a float32 file, 5 dims) instead of "unknown file".
 */
export function isIdxHeader(head: Uint8Array): boolean {
  return head.length >= 4 && head[0] === 0 && head[1] === 0 && Object.prototype.hasOwnProperty.call(TYPE_NAMES, head[2]!);
}

function formatError(name: string, problem: string): TarflowError {
  return new TarflowError('ERR_TARFLOW_FILE_FORMAT', `${name}: ${problem}`);
}

/** Parses an unsigned-byte IDX file (magic 0x00000801 for labels, 0x00000803 for images; 1 to 4 dims). */
export function parseIdx(buf: Uint8Array, name = 'IDX buffer'): IdxArray {
  if (!(buf instanceof Uint8Array)) {
    throw new TarflowError('ERR_TARFLOW_INVALID_ARGUMENT', `${name}: parseIdx expects a Uint8Array (or Buffer); read the file into a Buffer first`);
  }
  if (buf.byteLength >= 2 && buf[0] === 0x1f && buf[1] === 0x8b) {
    throw formatError(name, 'the file is gzip-compressed (as MNIST is distributed); decompress it first, e.g. gunzip train-images-idx3-ubyte.gz');
  }
  if (buf.byteLength < 4) {
    throw formatError(name, `file is ${buf.byteLength} bytes, shorter than the 4-byte IDX magic; the file is truncated or not an IDX file`);
  }
  if (buf[0] !== 0 || buf[1] !== 0) {
    throw formatError(name, 'magic does not start with two zero bytes; the file is not an IDX file');
  }
  const type = buf[2]!;
  const ndims = buf[3]!;
  if (type !== 0x08) {
    const known = TYPE_NAMES[type];
    if (known) {
      throw new TarflowError('ERR_TARFLOW_DTYPE', `${name}: IDX element type 0x${type.toString(16).padStart(2, '0')} (${known}) is not supported; only unsigned-byte IDX files (MNIST images and labels) can be read — convert the data to .npy instead`);
    }
    throw formatError(name, `IDX type code 0x${type.toString(16).padStart(2, '0')} is not a valid IDX type; the file is corrupt or not an IDX file`);
  }
  if (ndims < 1 || ndims > 4) {
    throw formatError(name, `IDX file claims ${ndims} dimensions; only 1 to 4 are supported (labels have 1, images 3)`);
  }
  const dataStart = 4 + 4 * ndims;
  if (buf.byteLength < dataStart) {
    throw formatError(name, `file is ${buf.byteLength} bytes, too short for the ${ndims} dimension sizes; the file is truncated`);
  }
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const dims: number[] = [];
  let count = 1;
  for (let i = 0; i < ndims; i++) {
    const d = view.getUint32(4 + 4 * i, false);
    dims.push(d);
    count *= d; // at most (2^32)^4, which stays finite and compares correctly with the byte count below
  }
  const actual = buf.byteLength - dataStart;
  if (count !== actual) {
    const why = count > actual ? 'the file is truncated' : 'the file has trailing bytes; it is corrupt';
    throw formatError(name, `dims [${dims.join(', ')}] need ${count} data bytes but the file has ${actual}; ${why}`);
  }
  return { dims, data: buf.subarray(dataStart) };
}

/** Reads and parses an unsigned-byte IDX file (decompress `.gz` files first). */
export async function readIdx(path: string): Promise<IdxArray> {
  return parseIdx(await readFileForParsing(path, 'IDX'), path);
}
