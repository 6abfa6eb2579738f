/**
 * Reader and writer for the safetensors format (https://github.com/huggingface/safetensors): an 8-byte
 * little-endian header length, a JSON header, then raw little-endian tensor bytes. Checkpoints may come from
 * anywhere, so the parser treats every number in the header as hostile until it has been checked against the
 * real size of the buffer.
 */
import { writeFileAtomic } from './atomic.js';
import { readFileForParsing } from './read-file.js';
import { TarflowError } from './errors.js';

export type SafetensorsDType = 'F32' | 'F64' | 'F16' | 'BF16' | 'I64' | 'I32' | 'U8' | 'I8' | 'BOOL';

export interface SafetensorsTensor {
  dtype: SafetensorsDType;
  shape: number[];
  /** Raw little-endian bytes; after parsing, a view into the file buffer (not necessarily aligned). */
  data: Uint8Array;
}

export interface SafetensorsFile {
  tensors: Map<string, SafetensorsTensor>;
  metadata: Record<string, string>;
}

const ITEM_SIZE: Readonly<Record<SafetensorsDType, number>> = {
  F64: 8, F32: 4, F16: 2, BF16: 2, I64: 8, I32: 4, U8: 1, I8: 1, BOOL: 1,
};

// The reference implementation refuses headers above 100 MB; a larger one is almost certainly garbage and
// JSON-parsing it would only waste memory.
const MAX_HEADER_BYTES = 100_000_000;

const HOST_LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

function isDType(x: unknown): x is SafetensorsDType {
  return typeof x === 'string' && Object.prototype.hasOwnProperty.call(ITEM_SIZE, x);
}

function formatError(name: string, problem: string): TarflowError {
  return new TarflowError('ERR_TARFLOW_FILE_FORMAT', `${name}: ${problem}`);
}

function describe(x: unknown): string {
  if (typeof x === 'string') return JSON.stringify(x.length > 40 ? `${x.slice(0, 40)}…` : x);
  if (Array.isArray(x)) return 'an array';
  if (x === null) return 'null';
  if (typeof x === 'object') return 'an object';
  return String(x);
}

/**
 * Byte count of a tensor, exact (BigInt) so that absurd shapes cannot overflow into a plausible number. Stops
 * once the count passes `cap`, because a hostile shape with millions of dims would otherwise grow a huge BigInt.
 */
function byteCount(shape: readonly number[], dtype: SafetensorsDType, cap: number): bigint {
  if (shape.includes(0)) return 0n;
  const limit = BigInt(cap);
  let n = BigInt(ITEM_SIZE[dtype]);
  for (const d of shape) {
    n *= BigInt(d);
    if (n > limit) return n;
  }
  return n;
}

function fmtShape(shape: readonly number[]): string {
  return shape.length <= 8 ? `[${shape.join(', ')}]` : `[${shape.slice(0, 8).join(', ')}, … (${shape.length} dims)]`;
}

function validShape(shape: unknown): shape is number[] {
  return Array.isArray(shape) && shape.every((d) => typeof d === 'number' && Number.isSafeInteger(d) && d >= 0);
}

/** Parses a safetensors file held in memory. Tensor data are views into `buf`; nothing is copied. */
export function parseSafetensors(buf: Uint8Array, name = 'safetensors buffer'): SafetensorsFile {
  if (!(buf instanceof Uint8Array)) {
    throw new TarflowError('ERR_TARFLOW_INVALID_ARGUMENT', `${name}: parseSafetensors expects a Uint8Array (or Buffer), got ${describe(buf)}; read the file into a Buffer first`);
  }
  if (buf.byteLength < 8) {
    throw formatError(name, `file is ${buf.byteLength} bytes, shorter than the 8-byte header length; the file is truncated or not a safetensors file`);
  }
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const headerLenBig = view.getBigUint64(0, true);
  if (headerLenBig > BigInt(buf.byteLength - 8)) {
    throw formatError(name, `header length ${headerLenBig} exceeds the file size ${buf.byteLength}; the file is truncated or not a safetensors file`);
  }
  const headerLen = Number(headerLenBig);
  if (headerLen > MAX_HEADER_BYTES) {
    throw formatError(name, `header length ${headerLen} exceeds the ${MAX_HEADER_BYTES}-byte limit; the file is corrupt or not a safetensors file`);
  }
  if (headerLen < 2) {
    throw formatError(name, `header length ${headerLen} is too short for a JSON object; the file is corrupt or not a safetensors file`);
  }
  let headerText: string;
  try {
    headerText = new TextDecoder('utf-8', { fatal: true }).decode(buf.subarray(8, 8 + headerLen));
  } catch {
    throw formatError(name, 'header is not valid UTF-8; the file is corrupt or not a safetensors file');
  }
  if (headerText[0] !== '{') {
    throw formatError(name, `header does not start with '{' (found ${describe(headerText.slice(0, 8))}); the file is corrupt or not a safetensors file`);
  }
  let header: unknown;
  try {
    header = JSON.parse(headerText);
  } catch (err) {
    throw formatError(name, `header is not valid JSON (${(err as Error).message}); the file is corrupt or was written by a broken writer`);
  }
  if (header === null || typeof header !== 'object' || Array.isArray(header)) {
    throw formatError(name, 'header is not a JSON object; the file is corrupt or not a safetensors file');
  }

  const dataStart = 8 + headerLen;
  const dataLen = buf.byteLength - dataStart;
  const tensors = new Map<string, SafetensorsTensor>();
  const metadata: Record<string, string> = {};
  const ranges: Array<{ begin: number; end: number; key: string }> = [];

  for (const key of Object.keys(header)) {
    const entry = (header as Record<string, unknown>)[key];
    if (key === '__metadata__') {
      if (entry === null || typeof entry !== 'object' || Array.isArray(entry)) {
        throw formatError(name, `__metadata__ is ${describe(entry)}, not an object of strings; the file was written by a broken writer`);
      }
      for (const mk of Object.keys(entry)) {
        const mv = (entry as Record<string, unknown>)[mk];
        if (typeof mv !== 'string') {
          throw formatError(name, `__metadata__[${describe(mk)}] is ${describe(mv)}, but metadata values must be strings; re-save with string metadata`);
        }
        // defineProperty so that a key such as "__proto__" becomes data, not a prototype change
        Object.defineProperty(metadata, mk, { value: mv, enumerable: true, writable: true, configurable: true });
      }
      continue;
    }
    if (entry === null || typeof entry !== 'object' || Array.isArray(entry)) {
      throw formatError(name, `entry ${describe(key)} is ${describe(entry)}, not an object with dtype, shape and data_offsets; the file is corrupt`);
    }
    const { dtype, shape, data_offsets: offsets } = entry as Record<string, unknown>;
    if (!isDType(dtype)) {
      throw formatError(name, `tensor ${describe(key)} has unknown dtype ${describe(dtype)}; supported dtypes are ${Object.keys(ITEM_SIZE).join(', ')} (convert the tensor before saving)`);
    }
    if (!validShape(shape)) {
      throw formatError(name, `tensor ${describe(key)} has shape ${describe(shape)}, but a shape must be an array of non-negative integers; the file is corrupt`);
    }
    if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every((o) => typeof o === 'number' && Number.isSafeInteger(o) && o >= 0)) {
      throw formatError(name, `tensor ${describe(key)} has data_offsets ${describe(offsets)}, but they must be two non-negative integers [begin, end]; the file is corrupt`);
    }
    const [begin, end] = offsets as [number, number];
    if (begin > end || end > dataLen) {
      throw formatError(name, `tensor ${describe(key)} has data_offsets [${begin}, ${end}] outside the data area of ${dataLen} bytes; the file is truncated or corrupt`);
    }
    const expected = byteCount(shape, dtype, dataLen);
    if (BigInt(end - begin) !== expected) {
      throw formatError(name, `tensor ${describe(key)} (${dtype}, shape ${fmtShape(shape)}) needs ${expected > BigInt(dataLen) ? `more than ${dataLen}` : expected} bytes but data_offsets [${begin}, ${end}] span ${end - begin}; the file is corrupt`);
    }
    ranges.push({ begin, end, key });
    tensors.set(key, { dtype, shape: shape.slice(), data: buf.subarray(dataStart + begin, dataStart + end) });
  }

  // Overlapping tensors would alias each other's bytes, so writing one would silently change another.
  ranges.sort((a, b) => a.begin - b.begin || a.end - b.end);
  for (let i = 1; i < ranges.length; i++) {
    const prev = ranges[i - 1]!;
    const cur = ranges[i]!;
    if (cur.begin < prev.end) {
      throw formatError(name, `tensors ${describe(prev.key)} [${prev.begin}, ${prev.end}] and ${describe(cur.key)} [${cur.begin}, ${cur.end}] overlap; the file is corrupt`);
    }
  }
  return { tensors, metadata };
}

/** Reads and parses a safetensors file. */
export async function readSafetensors(path: string): Promise<SafetensorsFile> {
  return parseSafetensors(await readFileForParsing(path, 'safetensors'), path);
}

function entriesOf(tensors: Map<string, SafetensorsTensor> | Record<string, SafetensorsTensor>): Array<[string, SafetensorsTensor]> {
  if (tensors instanceof Map) return [...tensors.entries()];
  if (tensors === null || typeof tensors !== 'object') {
    throw new TarflowError('ERR_TARFLOW_INVALID_ARGUMENT', `serializeSafetensors: tensors must be a Map or an object of tensors, got ${describe(tensors)}`);
  }
  return Object.keys(tensors).map((k) => [k, tensors[k]!]);
}

/**
 * Serializes tensors to safetensors bytes. Tensors are sorted by name and packed contiguously; the header is
 * padded with spaces so the data area starts 8-byte aligned, which lets readers map tensors without copying.
 */
export function serializeSafetensors(
  tensors: Map<string, SafetensorsTensor> | Record<string, SafetensorsTensor>,
  metadata?: Record<string, string>,
): Uint8Array {
  const entries = entriesOf(tensors).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  const header: Record<string, unknown> = {};
  if (metadata !== undefined) {
    if (metadata === null || typeof metadata !== 'object' || Array.isArray(metadata)) {
      throw new TarflowError('ERR_TARFLOW_INVALID_ARGUMENT', `serializeSafetensors: metadata must be an object of strings, got ${describe(metadata)}`);
    }
    const meta: Record<string, string> = {};
    for (const k of Object.keys(metadata)) {
      const v = metadata[k];
      if (typeof v !== 'string') {
        throw new TarflowError('ERR_TARFLOW_INVALID_ARGUMENT', `serializeSafetensors: metadata[${describe(k)}] is ${describe(v)}; safetensors metadata values must be strings (use JSON.stringify or String())`);
      }
      Object.defineProperty(meta, k, { value: v, enumerable: true, writable: true, configurable: true });
    }
    header['__metadata__'] = meta;
  }
  let offset = 0;
  for (const [key, t] of entries) {
    if (key === '__metadata__') {
      throw new TarflowError('ERR_TARFLOW_INVALID_ARGUMENT', 'serializeSafetensors: "__metadata__" is reserved for metadata and cannot name a tensor; rename the tensor');
    }
    if (t === null || typeof t !== 'object') {
      throw new TarflowError('ERR_TARFLOW_INVALID_ARGUMENT', `serializeSafetensors: tensor ${describe(key)} is ${describe(t)}; pass {dtype, shape, data}`);
    }
    if (!isDType(t.dtype)) {
      throw new TarflowError('ERR_TARFLOW_DTYPE', `serializeSafetensors: tensor ${describe(key)} has unknown dtype ${describe(t.dtype)}; use one of ${Object.keys(ITEM_SIZE).join(', ')}`);
    }
    if (!validShape(t.shape)) {
      throw new TarflowError('ERR_TARFLOW_SHAPE', `serializeSafetensors: tensor ${describe(key)} has shape ${describe(t.shape)}; a shape must be an array of non-negative integers`);
    }
    if (!(t.data instanceof Uint8Array)) {
      throw new TarflowError('ERR_TARFLOW_INVALID_ARGUMENT', `serializeSafetensors: tensor ${describe(key)} data must be a Uint8Array of raw little-endian bytes; use f32Tensor/bf16Tensor/i64Tensor to build one`);
    }
    const expected = byteCount(t.shape, t.dtype, t.data.byteLength);
    if (BigInt(t.data.byteLength) !== expected) {
      throw new TarflowError('ERR_TARFLOW_SHAPE', `serializeSafetensors: tensor ${describe(key)} (${t.dtype}, shape ${fmtShape(t.shape)}) needs ${expected > BigInt(t.data.byteLength) ? `more than ${t.data.byteLength}` : expected} bytes but has ${t.data.byteLength}; fix the shape or the data`);
    }
    // defineProperty: assigned, a tensor named "__proto__" would change the header's prototype and be left out
    Object.defineProperty(header, key, {
      value: { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + t.data.byteLength] }, enumerable: true, writable: true, configurable: true,
    });
    offset += t.data.byteLength;
  }
  const json = new TextEncoder().encode(JSON.stringify(header));
  const padded = Math.ceil(json.byteLength / 8) * 8;
  const out = new Uint8Array(8 + padded + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(padded), true);
  out.set(json, 8);
  out.fill(0x20, 8 + json.byteLength, 8 + padded);
  let pos = 8 + padded;
  for (const [, t] of entries) {
    out.set(t.data, pos);
    pos += t.data.byteLength;
  }
  return out;
}

/** Serializes and writes tensors atomically, so a crash never leaves a half-written checkpoint. */
export async function writeSafetensors(
  path: string,
  tensors: Map<string, SafetensorsTensor> | Record<string, SafetensorsTensor>,
  metadata?: Record<string, string>,
): Promise<void> {
  await writeFileAtomic(path, serializeSafetensors(tensors, metadata));
}

// ---------------------------------------------------------------------------------------------------------
// dtype conversion

let f16Table: Float32Array | undefined;

function halfToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 0x1f) return mant === 0 ? sign * Infinity : NaN;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

function f16Lookup(): Float32Array {
  if (!f16Table) {
    f16Table = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) f16Table[h] = halfToFloat(h);
  }
  return f16Table;
}

/** Copies the raw bytes into a fresh, aligned buffer; file data are often not aligned to the element size. */
function alignedCopy(data: Uint8Array): ArrayBuffer {
  const ab = new ArrayBuffer(data.byteLength);
  new Uint8Array(ab).set(data);
  return ab;
}

function u16View(t: SafetensorsTensor): Uint16Array {
  const ab = alignedCopy(t.data);
  const u = new Uint16Array(ab);
  if (!HOST_LITTLE_ENDIAN) {
    const dv = new DataView(ab);
    for (let i = 0; i < u.length; i++) u[i] = dv.getUint16(2 * i, true);
  }
  return u;
}

function elementCount(t: SafetensorsTensor, fn: string): number {
  if (t === null || typeof t !== 'object' || !(t.data instanceof Uint8Array) || !isDType(t.dtype)) {
    throw new TarflowError('ERR_TARFLOW_INVALID_ARGUMENT', `${fn}: expected a safetensors tensor {dtype, shape, data}, got ${describe(t)}`);
  }
  const size = ITEM_SIZE[t.dtype];
  if (t.data.byteLength % size !== 0) {
    throw new TarflowError('ERR_TARFLOW_SHAPE', `${fn}: ${t.dtype} tensor has ${t.data.byteLength} bytes, not a multiple of ${size}; the tensor data are corrupt`);
  }
  return t.data.byteLength / size;
}

function floatConvert<T extends Float32Array | Float64Array>(t: SafetensorsTensor, fn: string, Out: { new (n: number): T }): T {
  const n = elementCount(t, fn);
  const out = new Out(n);
  const dv = new DataView(t.data.buffer, t.data.byteOffset, t.data.byteLength);
  switch (t.dtype) {
    case 'F32':
      if (HOST_LITTLE_ENDIAN) out.set(new Float32Array(alignedCopy(t.data)));
      else for (let i = 0; i < n; i++) out[i] = dv.getFloat32(4 * i, true);
      return out;
    case 'F64':
      if (HOST_LITTLE_ENDIAN) out.set(new Float64Array(alignedCopy(t.data)));
      else for (let i = 0; i < n; i++) out[i] = dv.getFloat64(8 * i, true);
      return out;
    case 'F16': {
      const table = f16Lookup();
      const u = u16View(t);
      for (let i = 0; i < n; i++) out[i] = table[u[i]!]!;
      return out;
    }
    case 'BF16': {
      // bf16 is the top half of an f32, so widening is a shift into an f32 bit pattern
      const u = u16View(t);
      const bits = new Uint32Array(n);
      for (let i = 0; i < n; i++) bits[i] = u[i]! << 16;
      out.set(new Float32Array(bits.buffer));
      return out;
    }
    default:
      throw new TarflowError('ERR_TARFLOW_DTYPE', `${fn}: cannot convert a ${t.dtype} tensor to floating point; expected F32, F64, F16 or BF16 (use toInt32 for integer tensors)`);
  }
}

/** Converts an F32/F64/F16/BF16 tensor to a fresh Float32Array (F64 values are rounded). */
export function toFloat32(t: SafetensorsTensor): Float32Array {
  return floatConvert(t, 'toFloat32', Float32Array);
}

/** Converts an F32/F64/F16/BF16 tensor to a fresh Float64Array (exact for every source dtype). */
export function toFloat64(t: SafetensorsTensor): Float64Array {
  return floatConvert(t, 'toFloat64', Float64Array);
}

/** Converts an I64/I32/U8/I8 tensor to a fresh Int32Array; I64 values must fit in 32 bits. */
export function toInt32(t: SafetensorsTensor): Int32Array {
  const n = elementCount(t, 'toInt32');
  const out = new Int32Array(n);
  const d = t.data;
  const dv = new DataView(d.buffer, d.byteOffset, d.byteLength);
  switch (t.dtype) {
    case 'I64':
      for (let i = 0; i < n; i++) {
        const lo = dv.getInt32(8 * i, true);
        const hi = dv.getInt32(8 * i + 4, true);
        // a 64-bit value fits in int32 exactly when the high word is the sign extension of the low word
        if (hi !== lo >> 31) {
          throw new TarflowError('ERR_TARFLOW_DATA', `toInt32: I64 element ${i} is ${dv.getBigInt64(8 * i, true)}, outside the int32 range; the tensor cannot be used as 32-bit integers`);
        }
        out[i] = lo;
      }
      return out;
    case 'I32':
      if (HOST_LITTLE_ENDIAN) out.set(new Int32Array(alignedCopy(d)));
      else for (let i = 0; i < n; i++) out[i] = dv.getInt32(4 * i, true);
      return out;
    case 'U8':
      out.set(d);
      return out;
    case 'I8':
      out.set(new Int8Array(d.buffer, d.byteOffset, d.byteLength));
      return out;
    default:
      throw new TarflowError('ERR_TARFLOW_DTYPE', `toInt32: cannot convert a ${t.dtype} tensor to int32; expected I64, I32, U8 or I8 (use toFloat32 for floating-point tensors)`);
  }
}

// ---------------------------------------------------------------------------------------------------------
// tensor constructors

function checkedShape(shape: unknown, length: number, fn: string): number[] {
  if (!validShape(shape)) {
    throw new TarflowError('ERR_TARFLOW_SHAPE', `${fn}: shape ${describe(shape)} must be an array of non-negative integers`);
  }
  let n = 1;
  for (const d of shape) n *= d;
  if (n !== length) {
    throw new TarflowError('ERR_TARFLOW_SHAPE', `${fn}: shape ${fmtShape(shape)} holds ${n} elements but the data have ${length}; pass a shape whose product equals the data length`);
  }
  return shape.slice();
}

/** Wraps a Float32Array as an F32 tensor. On little-endian hosts the data are shared, not copied. */
export function f32Tensor(data: Float32Array, shape: number[]): SafetensorsTensor {
  if (!(data instanceof Float32Array)) {
    throw new TarflowError('ERR_TARFLOW_INVALID_ARGUMENT', `f32Tensor: data must be a Float32Array, got ${describe(data)}`);
  }
  const s = checkedShape(shape, data.length, 'f32Tensor');
  if (HOST_LITTLE_ENDIAN) return { dtype: 'F32', shape: s, data: new Uint8Array(data.buffer, data.byteOffset, data.byteLength) };
  const bytes = new Uint8Array(data.byteLength);
  const dv = new DataView(bytes.buffer);
  for (let i = 0; i < data.length; i++) dv.setFloat32(4 * i, data[i]!, true);
  return { dtype: 'F32', shape: s, data: bytes };
}

/** Rounds a Float32Array to BF16 (round to nearest, ties to even; NaN stays NaN) and wraps it as a tensor. */
export function bf16Tensor(data: Float32Array, shape: number[]): SafetensorsTensor {
  if (!(data instanceof Float32Array)) {
    throw new TarflowError('ERR_TARFLOW_INVALID_ARGUMENT', `bf16Tensor: data must be a Float32Array, got ${describe(data)}`);
  }
  const s = checkedShape(shape, data.length, 'bf16Tensor');
  const n = data.length;
  const bits = new Uint32Array(n);
  new Float32Array(bits.buffer).set(data);
  const bytes = new Uint8Array(2 * n);
  const dv = new DataView(bytes.buffer);
  for (let i = 0; i < n; i++) {
    const b = bits[i]!;
    let h: number;
    if ((b & 0x7f800000) === 0x7f800000 && (b & 0x007fffff) !== 0) {
      // plain rounding could carry a NaN payload into the exponent and turn it into infinity
      h = (b >>> 16) | 0x0040;
    } else {
      h = ((b + 0x7fff + ((b >>> 16) & 1)) >>> 16) & 0xffff;
    }
    dv.setUint16(2 * i, h, true);
  }
  return { dtype: 'BF16', shape: s, data: bytes };
}

/** Stores integers as an I64 tensor (the dtype PyTorch uses for labels and indices). */
export function i64Tensor(data: Int32Array | number[], shape: number[]): SafetensorsTensor {
  if (!(data instanceof Int32Array) && !Array.isArray(data)) {
    throw new TarflowError('ERR_TARFLOW_INVALID_ARGUMENT', `i64Tensor: data must be an Int32Array or an array of integers, got ${describe(data)}`);
  }
  const s = checkedShape(shape, data.length, 'i64Tensor');
  const bytes = new Uint8Array(8 * data.length);
  const dv = new DataView(bytes.buffer);
  for (let i = 0; i < data.length; i++) {
    const v = data[i]!;
    if (!Number.isSafeInteger(v)) {
      throw new TarflowError('ERR_TARFLOW_INVALID_ARGUMENT', `i64Tensor: element ${i} is ${v}, not a safe integer; round or filter the values first`);
    }
    dv.setBigInt64(8 * i, BigInt(v), true);
  }
  return { dtype: 'I64', shape: s, data: bytes };
}
