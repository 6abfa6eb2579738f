/**
 * `.npz` files: a ZIP archive of `.npy` members (numpy.savez). The writer stores members uncompressed, which is
 * what numpy.savez itself does and what FID tools read; the reader accepts stored and deflated members and checks
 * every offset and size against the buffer before touching it.
 */
import { inflateRawSync } from 'node:zlib';
import { writeFileAtomic } from './atomic.js';
import { readFileForParsing } from './read-file.js';
import { TarflowError } from './errors.js';
import { parseNpy, serializeNpy, type NpyArray, type NpyData } from './npy.js';
import { checkObject, describeValue, validationError } from './validate.js';

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

export function crc32(data: Uint8Array): number {
  let c = 0xffffffff;
  for (let i = 0; i < data.length; i++) c = CRC_TABLE[(c ^ data[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/** Serialises arrays as an uncompressed .npz (member `name` becomes `name.npy`). */
export function serializeNpz(arrays: Record<string, { data: NpyData; shape: number[] }>): Uint8Array {
  const locals: Uint8Array[] = [];
  const centrals: Uint8Array[] = [];
  let offset = 0;
  checkObject('arrays', arrays);
  const names = Object.keys(arrays);
  for (const name of names) {
    checkObject(`arrays.${name}`, arrays[name]);
    const body = serializeNpy(arrays[name].data, arrays[name].shape);
    const fileName = Buffer.from(`${name}.npy`, 'utf8');
    if (body.length >= 0xffffffff || offset >= 0xffffffff) {
      throw new TarflowError('ERR_TARFLOW_INVALID_ARGUMENT', 'serializeNpz: members over 4 GiB need ZIP64, which is not supported; write smaller shards');
    }
    const crc = crc32(body);
    const local = Buffer.alloc(30);
    local.writeUInt32LE(0x04034b50, 0);
    local.writeUInt16LE(20, 4); // version needed
    local.writeUInt16LE(0, 6); // flags
    local.writeUInt16LE(0, 8); // stored
    local.writeUInt32LE(0, 10); // time, date
    local.writeUInt32LE(crc, 14);
    local.writeUInt32LE(body.length, 18);
    local.writeUInt32LE(body.length, 22);
    local.writeUInt16LE(fileName.length, 26);
    local.writeUInt16LE(0, 28);
    const central = Buffer.alloc(46);
    central.writeUInt32LE(0x02014b50, 0);
    central.writeUInt16LE(20, 4);
    central.writeUInt16LE(20, 6);
    central.writeUInt16LE(0, 8);
    central.writeUInt16LE(0, 10);
    central.writeUInt32LE(0, 12);
    central.writeUInt32LE(crc, 16);
    central.writeUInt32LE(body.length, 20);
    central.writeUInt32LE(body.length, 24);
    central.writeUInt16LE(fileName.length, 28);
    central.writeUInt32LE(offset, 42);
    locals.push(local, fileName, body);
    centrals.push(central, fileName);
    offset += local.length + fileName.length + body.length;
  }
  const centralSize = centrals.reduce((a, b) => a + b.length, 0);
  const end = Buffer.alloc(22);
  end.writeUInt32LE(0x06054b50, 0);
  end.writeUInt16LE(names.length, 8);
  end.writeUInt16LE(names.length, 10);
  end.writeUInt32LE(centralSize, 12);
  end.writeUInt32LE(offset, 16);
  return new Uint8Array(Buffer.concat([...locals, ...centrals, end]));
}

export async function writeNpz(path: string, arrays: Record<string, { data: NpyData; shape: number[] }>): Promise<void> {
  await writeFileAtomic(path, serializeNpz(arrays));
}

export interface NpzReadOptions {
  /** Members (names without `.npy`) that hold class labels, whose refused dtypes get advice for labels. */
  labelMembers?: readonly string[];
}

/** Parses an .npz buffer into its arrays (member names without `.npy`). */
export function parseNpz(buf: Uint8Array, name = 'npz buffer', options: NpzReadOptions = {}): Map<string, NpyArray> {
  if (!(buf instanceof Uint8Array)) {
    throw validationError('ERR_TARFLOW_INVALID_ARGUMENT', 'buffer', 'a Uint8Array (or Buffer) holding the .npz file', describeValue(buf), 'read the file into a Buffer first, or use readNpz(path)');
  }
  checkObject('options', options);
  const fail = (why: string): never => {
    throw new TarflowError('ERR_TARFLOW_FILE_FORMAT', `${name}: ${why}; the file is truncated or not an .npz archive`);
  };
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  if (buf.length < 22) fail('too short for a ZIP archive');
  // The end-of-central-directory record sits in the last 22 + 65535 bytes.
  let eocd = -1;
  for (let i = buf.length - 22; i >= Math.max(0, buf.length - 22 - 0xffff); i--) {
    if (view.getUint32(i, true) === 0x06054b50) {
      eocd = i;
      break;
    }
  }
  if (eocd < 0) fail('no ZIP end-of-central-directory record');
  const entries = view.getUint16(eocd + 10, true);
  const cdSize = view.getUint32(eocd + 12, true);
  const cdOffset = view.getUint32(eocd + 16, true);
  if (cdOffset + cdSize > eocd) fail('central directory lies outside the file');
  const members: Array<{ member: string; method: number; crc: number; size: number; start: number; dataStart: number; end: number }> = [];
  const names = new Set<string>();
  let p = cdOffset;
  for (let e = 0; e < entries; e++) {
    if (p + 46 > cdOffset + cdSize || view.getUint32(p, true) !== 0x02014b50) fail(`bad central directory entry ${e}`);
    const method = view.getUint16(p + 10, true);
    const crc = view.getUint32(p + 16, true);
    const compSize = view.getUint32(p + 20, true);
    const size = view.getUint32(p + 24, true);
    const nameLen = view.getUint16(p + 28, true);
    const extraLen = view.getUint16(p + 30, true);
    const commentLen = view.getUint16(p + 32, true);
    const localOffset = view.getUint32(p + 42, true);
    if (p + 46 + nameLen > buf.length) fail('entry name outside the file');
    const member = Buffer.from(buf.subarray(p + 46, p + 46 + nameLen)).toString('utf8');
    p += 46 + nameLen + extraLen + commentLen;
    if (compSize === 0xffffffff || size === 0xffffffff) fail(`member '${member}' uses ZIP64, which is not supported`);
    if (localOffset + 30 > buf.length || view.getUint32(localOffset, true) !== 0x04034b50) fail(`member '${member}' has no local header`);
    const dataStart = localOffset + 30 + view.getUint16(localOffset + 26, true) + view.getUint16(localOffset + 28, true);
    if (dataStart + compSize > buf.length) fail(`member '${member}' runs past the end of the file`);
    // Readers disagree on which of two same-named members wins, so the archive means different data to each.
    if (names.has(member)) fail(`member '${member}' appears twice in the directory`);
    names.add(member);
    members.push({ member, method, crc, size, start: localOffset, dataStart, end: dataStart + compSize });
  }
  // Every member is decoded into its own array: entries that point at the same bytes (a "zip bomb" without
  // nesting) would turn a small file into one copy per entry, so each member must own its bytes.
  const byStart = [...members].sort((a, b) => a.start - b.start);
  for (let i = 1; i < byStart.length; i++) {
    if (byStart[i]!.start < byStart[i - 1]!.end) fail(`members '${byStart[i - 1]!.member}' and '${byStart[i]!.member}' share bytes`);
  }
  const out = new Map<string, NpyArray>();
  for (const { member, method, crc, size, dataStart, end } of members) {
    const raw = buf.subarray(dataStart, end);
    let body: Uint8Array;
    if (method === 0) body = raw;
    else if (method === 8) {
      try {
        body = new Uint8Array(inflateRawSync(raw, { maxOutputLength: size + 1 }));
      } catch {
        fail(`member '${member}' does not inflate`);
        throw new Error('unreachable');
      }
    } else {
      throw new TarflowError('ERR_TARFLOW_FILE_FORMAT', `${name}: member '${member}' uses ZIP compression method ${method}; save with numpy.savez or savez_compressed`);
    }
    if (body.length !== size) fail(`member '${member}' has ${body.length} bytes, the directory says ${size}`);
    if (crc32(body) !== crc) fail(`member '${member}' fails its CRC check`);
    if (!member.endsWith('.npy')) continue;
    const key = member.slice(0, -4);
    out.set(key, parseNpy(body, `${name}:${member}`, { labels: options.labelMembers?.includes(key) ?? false }));
  }
  return out;
}

export async function readNpz(path: string, options?: NpzReadOptions): Promise<Map<string, NpyArray>> {
  return parseNpz(await readFileForParsing(path, 'npz'), path, options);
}
