/**
 * Bounded reads of files from outside (datasets, checkpoints, configs): a device, a FIFO or a file larger than one
 * buffer is refused before it is read, and file-system failures become a TarflowError that names the file.
 */
import type * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import { TarflowError } from './errors.js';

/** The most bytes `readFile` returns in one buffer (Node's kIoMaxLength); a larger file fails only after opening. */
const MAX_READ_BYTES = 2 ** 31 - 1;

/**
 * Stats a file the format readers are about to open or read whole, refusing what would never finish: a device or a
 * FIFO (reading /dev/zero never ends; opening a FIFO waits for a writer) and a file larger than one buffer.
 */
export async function statFileForParsing(path: string, what: string): Promise<fs.Stats> {
  if (typeof path !== 'string' || path.length === 0) {
    throw new TarflowError('ERR_TARFLOW_INVALID_ARGUMENT', `${what}: path must be a non-empty string, got ${typeof path}; pass the file path to read`);
  }
  let info: fs.Stats;
  try {
    info = await fsp.stat(path);
  } catch (err) {
    throw readError(path, what, err);
  }
  if (info.isDirectory()) throw readError(path, what, Object.assign(new Error(`${path} is a folder`), { code: 'EISDIR' }));
  if (!info.isFile()) {
    throw new TarflowError('ERR_TARFLOW_INVALID_ARGUMENT', `${path}: not a regular file but ${describeFileKind(info)}, which is never read as the ${what} file (it may never end); pass a file`);
  }
  if (info.size > MAX_READ_BYTES) {
    throw readError(path, what, Object.assign(new Error(`${path} is ${info.size} bytes`), { code: 'ERR_FS_FILE_TOO_LARGE' }));
  }
  return info;
}

/** What a path that is not a regular file is, for messages. */
export function describeFileKind(info: fs.Stats): string {
  return info.isFIFO() ? 'a FIFO' : info.isDirectory() ? 'a folder' : info.isCharacterDevice() || info.isBlockDevice() ? 'a device' : info.isSocket() ? 'a socket' : 'not a plain file';
}

function readError(path: string, what: string, err: unknown): TarflowError {
  const e = err as NodeJS.ErrnoException;
  let hint = 'check the path and permissions';
  if (e?.code === 'ENOENT') hint = 'the file does not exist; check the path';
  else if (e?.code === 'EISDIR') hint = 'the path is a folder; pass the path of the file inside it';
  else if (e?.code === 'ERR_FS_FILE_TOO_LARGE') hint = 'the file is larger than Node can read into one buffer (2 GiB); split it into smaller files';
  return new TarflowError('ERR_TARFLOW_INVALID_ARGUMENT', `${path}: could not read the ${what} file (${e?.code ?? 'error'}): ${hint}`, { cause: err });
}

/**
 * Reads a whole file for one of the format parsers, turning file-system failures into a TarflowError that
 * says which file and what to do, so callers need not handle raw errno errors next to format errors.
 */
export async function readFileForParsing(path: string, what: string): Promise<Uint8Array> {
  await statFileForParsing(path, what);
  try {
    const b = await fsp.readFile(path);
    return new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
  } catch (err) {
    throw readError(path, what, err);
  }
}
