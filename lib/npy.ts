/**
 * Reader and writer for NumPy `.npy` files (format versions 1.0, 2.0 and 3.0), the usual way data sets
 * prepared in Python reach this library. The header is a Python dict literal; it is parsed here by a small
 * strict grammar, never evaluated, and pickled object arrays are refused outright.
 */
import { writeFileAtomic } from './atomic.js';
import { readFileForParsing } from './read-file.js';
import { TarflowError } from './errors.js';

export type NpyDType = 'u1' | 'i1' | 'i2' | 'u2' | 'i4' | 'u4' | 'i8' | 'u8' | 'f4' | 'f8' | 'b1';

export type NpyData =
  | Uint8Array
  | Int8Array
  | Int16Array
  | Uint16Array
  | Int32Array
  | Uint32Array
  | BigInt64Array
  | BigUint64Array
  | Float32Array
  | Float64Array;

export interface NpyArray {
  dtype: NpyDType;
  shape: number[];
  /** C-order elements in a fresh, aligned typed array (b1 arrays are a Uint8Array of 0/1). */
  data: NpyData;
  fortranOrder: false;
}

const MAGIC = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]; // "\x93NUMPY"
const MAX_DIMS = 64; // NumPy's own limit; also keeps size arithmetic on hostile headers cheap
const HOST_LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

interface DTypeInfo {
  size: number;
  make: (n: number) => NpyData;
}

const DTYPES: Readonly<Record<NpyDType, DTypeInfo>> = {
  b1: { size: 1, make: (n) => new Uint8Array(n) },
  u1: { size: 1, make: (n) => new Uint8Array(n) },
  i1: { size: 1, make: (n) => new Int8Array(n) },
  u2: { size: 2, make: (n) => new Uint16Array(n) },
  i2: { size: 2, make: (n) => new Int16Array(n) },
  u4: { size: 4, make: (n) => new Uint32Array(n) },
  i4: { size: 4, make: (n) => new Int32Array(n) },
  u8: { size: 8, make: (n) => new BigUint64Array(n) },
  i8: { size: 8, make: (n) => new BigInt64Array(n) },
  f4: { size: 4, make: (n) => new Float32Array(n) },
  f8: { size: 8, make: (n) => new Float64Array(n) },
};

function formatError(name: string, problem: string): TarflowError {
  return new TarflowError('ERR_TARFLOW_FILE_FORMAT', `${name}: ${problem}`);
}

function fmtShape(shape: readonly number[]): string {
  return shape.length <= 8 ? `(${shape.join(', ')})` : `(${shape.slice(0, 8).join(', ')}, … ${shape.length} dims)`;
}

// ---------------------------------------------------------------------------------------------------------
// header dict grammar: just enough Python literal syntax for what numpy.lib.format writes

type PyValue = string | boolean | number | PyValue[] | { tuple: PyValue[] };

class HeaderParser {
  private pos = 0;
  private depth = 0;
  constructor(private readonly text: string, private readonly name: string) {}

  private fail(problem: string): never {
    throw formatError(this.name, `header ${problem} at character ${this.pos}; the file is corrupt or was not written by numpy.save`);
  }

  private ws(): void {
    while (this.pos < this.text.length && ' \t\r\n'.includes(this.text[this.pos]!)) this.pos++;
  }

  private peek(): string {
    return this.text[this.pos] ?? '';
  }

  private expect(ch: string): void {
    this.ws();
    if (this.peek() !== ch) this.fail(`expected '${ch}' but found ${this.peek() ? `'${this.peek()}'` : 'the end'}`);
    this.pos++;
  }

  private string(): string {
    const quote = this.peek();
    this.pos++;
    const start = this.pos;
    while (this.pos < this.text.length && this.text[this.pos] !== quote) {
      if (this.text[this.pos] === '\\') this.fail('has an escaped string (numpy never writes one)');
      this.pos++;
    }
    if (this.pos >= this.text.length) this.fail('has an unterminated string');
    const s = this.text.slice(start, this.pos);
    this.pos++;
    return s;
  }

  private int(): number {
    const start = this.pos;
    if (this.peek() === '-') this.pos++;
    while (this.pos < this.text.length && this.peek() >= '0' && this.peek() <= '9') this.pos++;
    const digits = this.text.slice(start, this.pos);
    if (digits === '' || digits === '-') this.fail('expected an integer');
    if (this.peek() === 'L' || this.peek() === 'l') this.pos++; // Python 2 long suffix, written by old numpy
    const v = Number(digits);
    if (!Number.isSafeInteger(v)) this.fail(`has integer ${digits.slice(0, 30)} beyond 2^53`);
    return v;
  }

  private value(): PyValue {
    this.ws();
    const c = this.peek();
    if (c === "'" || c === '"') return this.string();
    if (c === '(' || c === '[') return this.sequence(c);
    if (this.text.startsWith('True', this.pos)) { this.pos += 4; return true; }
    if (this.text.startsWith('False', this.pos)) { this.pos += 5; return false; }
    if (c === '-' || (c >= '0' && c <= '9')) return this.int();
    return this.fail(`has an unsupported value starting with ${c ? `'${c}'` : 'the end'}`);
  }

  private sequence(open: string): PyValue {
    const close = open === '(' ? ')' : ']';
    // bounded nesting, so a header of a million '(' cannot overflow the call stack
    if (++this.depth > 4) this.fail('nests sequences too deeply');
    this.pos++;
    const items: PyValue[] = [];
    let sawComma = false;
    for (;;) {
      this.ws();
      if (this.peek() === close) { this.pos++; break; }
      if (items.length > MAX_DIMS) this.fail(`has a sequence longer than ${MAX_DIMS} items`);
      items.push(this.value());
      this.ws();
      if (this.peek() === ',') { this.pos++; sawComma = true; continue; }
      if (this.peek() === close) { this.pos++; break; }
      this.fail(`expected ',' or '${close}' in a ${open === '(' ? 'tuple' : 'list'}`);
    }
    this.depth--;
    if (open === '[') return items;
    // "(3)" is just the integer 3 in Python, which numpy would not accept as a shape either
    if (items.length === 1 && !sawComma) return items[0]!;
    return { tuple: items };
  }

  dict(): Map<string, PyValue> {
    const out = new Map<string, PyValue>();
    this.expect('{');
    for (;;) {
      this.ws();
      if (this.peek() === '}') { this.pos++; break; }
      const c = this.peek();
      if (c !== "'" && c !== '"') this.fail('expected a quoted key');
      const key = this.string();
      if (out.has(key)) this.fail(`repeats the key '${key}'`);
      this.expect(':');
      out.set(key, this.value());
      this.ws();
      if (this.peek() === ',') { this.pos++; continue; }
      if (this.peek() === '}') { this.pos++; break; }
      this.fail("expected ',' or '}' in the dict");
    }
    this.ws();
    if (this.pos !== this.text.length) this.fail('has text after the closing brace');
    return out;
  }
}

/** What to do about an unsupported labels dtype: astype('<f4'), right for data, only trades it for the float refusal. */
const LABELS_DTYPE_FIX = "turn class names (strings or objects) into indices with np.unique(y, return_inverse=True)[1].astype('<i8'), " +
  "and whole numbers of another dtype with y.astype('<i8'), before np.save";

function parseDescr(descr: PyValue, name: string, labels: boolean): NpyDType {
  if (Array.isArray(descr)) {
    throw new TarflowError('ERR_TARFLOW_DTYPE', `${name}: the array has a structured dtype (record fields), which is not supported; save each field as its own plain array`);
  }
  if (typeof descr !== 'string') throw formatError(name, "header 'descr' is not a string; the file is corrupt");
  const m = /^([<>|=]?)([a-zA-Z])(\d*)$/.exec(descr);
  if (!m) {
    throw new TarflowError('ERR_TARFLOW_DTYPE', `${name}: dtype '${descr.slice(0, 40)}' is not supported; ` +
      (labels ? `labels must be integers: ${LABELS_DTYPE_FIX}` : "convert with arr.astype('<f4') (or another plain numeric dtype) before np.save"));
  }
  const [, order, kind, sizeText] = m as unknown as [string, string, string, string];
  if (kind === 'O') {
    throw new TarflowError('ERR_TARFLOW_DTYPE', `${name}: the array has dtype object ('${descr}'), which numpy stores as a pickle; pickles can run code and are never loaded. ` +
      (labels ? `Labels must be integers: ${LABELS_DTYPE_FIX}` : 'Save a numeric array instead, e.g. np.save(path, np.asarray(x, dtype=np.float32))'));
  }
  const code = `${kind}${sizeText}`;
  if (!Object.prototype.hasOwnProperty.call(DTYPES, code)) {
    throw new TarflowError('ERR_TARFLOW_DTYPE', `${name}: dtype '${descr}' is not supported; ` +
      (labels ? `labels must be integers: ${LABELS_DTYPE_FIX}` : `supported are ${Object.keys(DTYPES).join(', ')} (convert with arr.astype('<f4') or arr.astype('<i8') before np.save)`));
  }
  const dtype = code as NpyDType;
  const size = DTYPES[dtype].size;
  if (size > 1) {
    if (order === '>') {
      throw new TarflowError('ERR_TARFLOW_DTYPE', `${name}: the array is big-endian ('${descr}'); convert it with arr.astype(arr.dtype.newbyteorder('<')) before np.save`);
    }
    if (order !== '<') {
      throw formatError(name, `dtype '${descr}' does not state little-endian byte order ('<'); re-save it with numpy.save, which always writes the byte order`);
    }
  }
  return dtype;
}

export interface NpyReadOptions {
  /** The array holds class labels, so a dtype that is refused gets advice for labels (integers) rather than for data. */
  labels?: boolean;
}

/** Parses a `.npy` file held in memory into a C-order array with a fresh, aligned typed array. */
export function parseNpy(buf: Uint8Array, name = 'npy buffer', options: NpyReadOptions = {}): NpyArray {
  if (!(buf instanceof Uint8Array)) {
    throw new TarflowError('ERR_TARFLOW_INVALID_ARGUMENT', `${name}: parseNpy expects a Uint8Array (or Buffer); read the file into a Buffer first`);
  }
  if (buf.byteLength < 10 || !MAGIC.every((b, i) => buf[i] === b)) {
    const gz = buf.byteLength >= 2 && buf[0] === 0x1f && buf[1] === 0x8b;
    const zip = buf.byteLength >= 2 && buf[0] === 0x50 && buf[1] === 0x4b;
    const hint = gz ? 'it is gzip-compressed; decompress it first'
      : zip ? 'it looks like an .npz archive; unzip it and load the .npy files inside'
      : 'it is truncated or not an .npy file (save arrays with numpy.save)';
    throw formatError(name, `missing the \\x93NUMPY magic; ${hint}`);
  }
  const major = buf[6]!;
  const minor = buf[7]!;
  if ((major !== 1 && major !== 2 && major !== 3) || minor !== 0) {
    throw formatError(name, `format version ${major}.${minor} is not supported (expected 1.0, 2.0 or 3.0); re-save it with numpy.save`);
  }
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  let headerStart: number;
  let headerLen: number;
  if (major === 1) {
    headerStart = 10;
    headerLen = view.getUint16(8, true);
  } else {
    if (buf.byteLength < 12) throw formatError(name, `file is ${buf.byteLength} bytes, too short for a version ${major}.0 header; the file is truncated`);
    headerStart = 12;
    headerLen = view.getUint32(8, true);
  }
  if (headerLen > buf.byteLength - headerStart) {
    throw formatError(name, `header length ${headerLen} exceeds the ${buf.byteLength - headerStart} bytes left in the file; the file is truncated`);
  }
  const headerBytes = buf.subarray(headerStart, headerStart + headerLen);
  let headerText: string;
  try {
    headerText = new TextDecoder(major === 3 ? 'utf-8' : 'latin1', { fatal: true }).decode(headerBytes);
  } catch {
    throw formatError(name, 'header is not valid UTF-8; the file is corrupt');
  }
  const dict = new HeaderParser(headerText, name).dict();

  for (const key of dict.keys()) {
    if (key !== 'descr' && key !== 'fortran_order' && key !== 'shape') {
      throw formatError(name, `header has the unexpected key '${key.slice(0, 40)}' (expected only descr, fortran_order, shape); the file was not written by numpy.save`);
    }
  }
  if (!dict.has('descr') || !dict.has('fortran_order') || !dict.has('shape')) {
    const missing = ['descr', 'fortran_order', 'shape'].filter((k) => !dict.has(k));
    throw formatError(name, `header lacks ${missing.join(', ')}; the file is corrupt or was not written by numpy.save`);
  }
  const dtype = parseDescr(dict.get('descr')!, name, options.labels === true);
  const fortran = dict.get('fortran_order');
  if (typeof fortran !== 'boolean') throw formatError(name, "header 'fortran_order' is not True or False; the file is corrupt");
  const shapeVal = dict.get('shape');
  if (shapeVal === null || typeof shapeVal !== 'object' || Array.isArray(shapeVal)) {
    throw formatError(name, "header 'shape' is not a tuple of integers; the file is corrupt");
  }
  if (!shapeVal.tuple.every((d): d is number => typeof d === 'number')) {
    throw formatError(name, "header 'shape' is not a tuple of integers; the file is corrupt");
  }
  const shape = shapeVal.tuple;
  if (shape.length > MAX_DIMS) throw formatError(name, `shape has ${shape.length} dims, more than numpy's ${MAX_DIMS}; the file is corrupt`);
  if (shape.some((d) => d < 0)) throw formatError(name, `shape ${fmtShape(shape)} has a negative dimension; the file is corrupt`);
  if (fortran) {
    throw new TarflowError('ERR_TARFLOW_FILE_FORMAT', `${name}: the array is stored in Fortran (column-major) order, which is not supported; re-save it in C order with np.save(path, np.ascontiguousarray(arr))`);
  }

  const size = DTYPES[dtype].size;
  const count = shape.reduce((a, d) => a * BigInt(d), 1n);
  const expected = count * BigInt(size);
  const dataStart = headerStart + headerLen;
  const actual = buf.byteLength - dataStart;
  if (expected !== BigInt(actual)) {
    const why = expected > BigInt(actual) ? 'the file is truncated' : 'the file has trailing bytes after the array; it is corrupt or several arrays were concatenated';
    throw formatError(name, `dtype ${dtype} shape ${fmtShape(shape)} needs ${expected} data bytes but the file has ${actual}; ${why}`);
  }
  const n = Number(count);
  const data = DTYPES[dtype].make(n);
  const src = buf.subarray(dataStart);
  if (HOST_LITTLE_ENDIAN || size === 1) {
    // copying through bytes both aligns the data and avoids aliasing the caller's buffer
    new Uint8Array(data.buffer, data.byteOffset, data.byteLength).set(src);
  } else {
    readLittleEndian(src, data, dtype);
  }
  return { dtype, shape, data, fortranOrder: false };
}

function readLittleEndian(src: Uint8Array, out: NpyData, dtype: NpyDType): void {
  const dv = new DataView(src.buffer, src.byteOffset, src.byteLength);
  const n = out.length;
  for (let i = 0; i < n; i++) {
    switch (dtype) {
      case 'i2': (out as Int16Array)[i] = dv.getInt16(2 * i, true); break;
      case 'u2': (out as Uint16Array)[i] = dv.getUint16(2 * i, true); break;
      case 'i4': (out as Int32Array)[i] = dv.getInt32(4 * i, true); break;
      case 'u4': (out as Uint32Array)[i] = dv.getUint32(4 * i, true); break;
      case 'i8': (out as BigInt64Array)[i] = dv.getBigInt64(8 * i, true); break;
      case 'u8': (out as BigUint64Array)[i] = dv.getBigUint64(8 * i, true); break;
      case 'f4': (out as Float32Array)[i] = dv.getFloat32(4 * i, true); break;
      case 'f8': (out as Float64Array)[i] = dv.getFloat64(8 * i, true); break;
      default: break;
    }
  }
}

/** Reads and parses a `.npy` file. */
export async function readNpy(path: string, options?: NpyReadOptions): Promise<NpyArray> {
  return parseNpy(await readFileForParsing(path, 'npy'), path, options);
}

function dtypeOf(data: unknown): NpyDType | undefined {
  if (data instanceof Uint8Array || data instanceof Uint8ClampedArray) return 'u1';
  if (data instanceof Int8Array) return 'i1';
  if (data instanceof Int16Array) return 'i2';
  if (data instanceof Uint16Array) return 'u2';
  if (data instanceof Int32Array) return 'i4';
  if (data instanceof Uint32Array) return 'u4';
  if (data instanceof BigInt64Array) return 'i8';
  if (data instanceof BigUint64Array) return 'u8';
  if (data instanceof Float32Array) return 'f4';
  if (data instanceof Float64Array) return 'f8';
  return undefined;
}

/**
 * Serializes a typed array as a C-order `.npy` file (version 1.0, or 2.0 when the header needs it). The dtype
 * follows the typed array; pass `dtype: 'b1'` with a Uint8Array of 0/1 to store booleans.
 */
export function serializeNpy(data: NpyData, shape: number[], opts?: { dtype?: NpyDType }): Uint8Array {
  const natural = dtypeOf(data);
  if (!natural) {
    throw new TarflowError('ERR_TARFLOW_INVALID_ARGUMENT', 'serializeNpy: data must be a typed array (Uint8Array, Int8Array, …, Float64Array)');
  }
  let dtype = natural;
  if (opts?.dtype !== undefined && opts.dtype !== natural) {
    if (!(opts.dtype === 'b1' && natural === 'u1')) {
      throw new TarflowError('ERR_TARFLOW_DTYPE', `serializeNpy: dtype '${opts.dtype}' does not match the ${data.constructor.name} data (which is '${natural}'); convert the data or drop the dtype option`);
    }
    dtype = 'b1';
  }
  if (!Array.isArray(shape) || shape.length > MAX_DIMS || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    throw new TarflowError('ERR_TARFLOW_SHAPE', `serializeNpy: shape must be an array of at most ${MAX_DIMS} non-negative integers`);
  }
  const count = shape.reduce((a, d) => a * d, 1);
  if (count !== data.length) {
    throw new TarflowError('ERR_TARFLOW_SHAPE', `serializeNpy: shape ${fmtShape(shape)} holds ${count} elements but the data have ${data.length}; pass a shape whose product equals the data length`);
  }
  const descr = DTYPES[dtype].size === 1 ? `|${dtype}` : `<${dtype}`;
  const shapeText = shape.length === 1 ? `(${shape[0]},)` : `(${shape.join(', ')})`;
  const dict = `{'descr': '${descr}', 'fortran_order': False, 'shape': ${shapeText}, }`;
  // numpy pads the header with spaces and a newline so that the data start on a 64-byte boundary
  let major = 1;
  let prefix = 10;
  let total = Math.ceil((prefix + dict.length + 1) / 64) * 64;
  if (total - prefix > 0xffff) {
    major = 2;
    prefix = 12;
    total = Math.ceil((prefix + dict.length + 1) / 64) * 64;
  }
  const headerLen = total - prefix;
  const header = dict + ' '.repeat(headerLen - dict.length - 1) + '\n';
  const out = new Uint8Array(total + data.byteLength);
  out.set(MAGIC, 0);
  out[6] = major;
  out[7] = 0;
  const dv = new DataView(out.buffer);
  if (major === 1) dv.setUint16(8, headerLen, true);
  else dv.setUint32(8, headerLen, true);
  for (let i = 0; i < header.length; i++) out[prefix + i] = header.charCodeAt(i);
  if (HOST_LITTLE_ENDIAN || DTYPES[dtype].size === 1) {
    out.set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength), total);
  } else {
    writeLittleEndian(data, new DataView(out.buffer, total), dtype);
  }
  return out;
}

function writeLittleEndian(data: NpyData, dv: DataView, dtype: NpyDType): void {
  for (let i = 0; i < data.length; i++) {
    switch (dtype) {
      case 'i2': dv.setInt16(2 * i, (data as Int16Array)[i]!, true); break;
      case 'u2': dv.setUint16(2 * i, (data as Uint16Array)[i]!, true); break;
      case 'i4': dv.setInt32(4 * i, (data as Int32Array)[i]!, true); break;
      case 'u4': dv.setUint32(4 * i, (data as Uint32Array)[i]!, true); break;
      case 'i8': dv.setBigInt64(8 * i, (data as BigInt64Array)[i]!, true); break;
      case 'u8': dv.setBigUint64(8 * i, (data as BigUint64Array)[i]!, true); break;
      case 'f4': dv.setFloat32(4 * i, (data as Float32Array)[i]!, true); break;
      case 'f8': dv.setFloat64(8 * i, (data as Float64Array)[i]!, true); break;
      default: break;
    }
  }
}

/** Serializes and writes a `.npy` file atomically. */
export async function writeNpy(path: string, data: NpyData, shape: number[], opts?: { dtype?: NpyDType }): Promise<void> {
  await writeFileAtomic(path, serializeNpy(data, shape, opts));
}

/**
 * Converts a label array of any integer dtype to Int32Array (labels often arrive as int64 from PyTorch or
 * uint8 from MNIST-style data), refusing values that do not fit rather than wrapping them.
 */
export function labelsToInt32(arr: NpyArray): Int32Array {
  if (arr === null || typeof arr !== 'object' || !Object.prototype.hasOwnProperty.call(DTYPES, arr.dtype)) {
    throw new TarflowError('ERR_TARFLOW_INVALID_ARGUMENT', 'labelsToInt32: expected an NpyArray from parseNpy/readNpy');
  }
  if (arr.dtype === 'f4' || arr.dtype === 'f8') {
    throw new TarflowError('ERR_TARFLOW_DTYPE', `labelsToInt32: labels have floating-point dtype ${arr.dtype}; save them as integers, e.g. np.save(path, labels.astype(np.int64))`);
  }
  const n = arr.data.length;
  const out = new Int32Array(n);
  if (arr.data instanceof BigInt64Array || arr.data instanceof BigUint64Array) {
    const lo = -(2n ** 31n);
    const hi = 2n ** 31n - 1n;
    for (let i = 0; i < n; i++) {
      const v = arr.data[i]!;
      if (v < lo || v > hi) {
        throw new TarflowError('ERR_TARFLOW_DATA', `labelsToInt32: label ${i} is ${v}, outside the int32 range; labels must be small non-negative class indices`);
      }
      out[i] = Number(v);
    }
    return out;
  }
  const src = arr.data as Exclude<NpyData, BigInt64Array | BigUint64Array>;
  for (let i = 0; i < n; i++) {
    const v = src[i]!;
    if (v > 0x7fffffff) {
      throw new TarflowError('ERR_TARFLOW_DATA', `labelsToInt32: label ${i} is ${v}, outside the int32 range; labels must be small non-negative class indices`);
    }
    out[i] = v;
  }
  return out;
}
