/**
 * Atomic file replacement: a reader (or a crash) sees either the old file or the complete new one, never a
 * half-written checkpoint. The temp file lives in the target's folder because rename(2) is only atomic within
 * one file system. Also the output folders those files go into: made, checked creatable, checked empty. A run's
 * claim on a folder is folder-lock.ts; bounded reads of outside files are read-file.ts.
 */
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as nodePath from 'node:path';
import { TarflowError } from './errors.js';

function tempPathFor(path: string): string {
  const dir = nodePath.dirname(path);
  const base = nodePath.basename(path);
  return nodePath.join(dir, `.${base}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`);
}

/**
 * The name of the file a temp file of writeFileAtomic stands in for (`.NAME.PID.HEX12.tmp`), or null when `name` is
 * not one. A process killed between writing and renaming leaves it behind; the run that later holds the folder's
 * claim may remove the ones of its own files.
 */
export function atomicTempTarget(name: string): string | null {
  return /^\.(.+)\.[1-9]\d*\.[0-9a-f]{12}\.tmp$/.exec(name)?.[1] ?? null;
}

// Some platforms and file systems (Windows, some network mounts) cannot fsync a directory; the rename has
// still happened, so durability is merely best effort there rather than a reason to fail the write.
function isIgnorableDirSyncError(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  return code === 'EINVAL' || code === 'EISDIR' || code === 'EPERM' || code === 'EACCES' || code === 'ENOTSUP' || code === 'EBADF';
}

function wrapWriteError(path: string, err: unknown): TarflowError {
  if (err instanceof TarflowError) return err;
  const e = err as NodeJS.ErrnoException;
  const code = e?.code ? ` (${e.code})` : '';
  return new TarflowError(
    'ERR_TARFLOW_INVALID_ARGUMENT',
    `${path}: could not write the file${code}: ${e?.message ?? String(err)}; check that the folder exists, is writable and has free space`,
    { cause: err },
  );
}

function checkPath(path: unknown): asserts path is string {
  if (typeof path !== 'string' || path.length === 0) {
    throw new TarflowError('ERR_TARFLOW_INVALID_ARGUMENT', `writeFileAtomic: path must be a non-empty string, got ${typeof path}; pass the destination file path`);
  }
}

/** Writes `data` to `path` atomically (temp file in the same folder, fsync, rename, fsync the folder). */
export async function writeFileAtomic(path: string, data: Uint8Array | string): Promise<void> {
  checkPath(path);
  const tmp = tempPathFor(path);
  let handle: fsp.FileHandle | undefined;
  try {
    handle = await fsp.open(tmp, 'wx', 0o644);
    await handle.writeFile(data);
    await handle.sync();
    await handle.close();
    handle = undefined;
    await fsp.rename(tmp, path);
  } catch (err) {
    if (handle) await handle.close().catch(() => undefined);
    await fsp.rm(tmp, { force: true }).catch(() => undefined);
    throw wrapWriteError(path, err);
  }
  let dirHandle: fsp.FileHandle | undefined;
  try {
    dirHandle = await fsp.open(nodePath.dirname(path), 'r');
    await dirHandle.sync();
  } catch (err) {
    if (!isIgnorableDirSyncError(err)) throw wrapWriteError(path, err);
  } finally {
    if (dirHandle) await dirHandle.close().catch(() => undefined);
  }
}

/** Synchronous twin of {@link writeFileAtomic}, for exit handlers and other places that cannot await. */
export function writeFileAtomicSync(path: string, data: Uint8Array | string): void {
  checkPath(path);
  const tmp = tempPathFor(path);
  let fd: number | undefined;
  try {
    fd = fs.openSync(tmp, 'wx', 0o644);
    fs.writeFileSync(fd, data);
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    fd = undefined;
    fs.renameSync(tmp, path);
  } catch (err) {
    if (fd !== undefined) {
      try { fs.closeSync(fd); } catch { /* already failing; the original error matters more */ }
    }
    try { fs.rmSync(tmp, { force: true }); } catch { /* best effort cleanup */ }
    throw wrapWriteError(path, err);
  }
  let dirFd: number | undefined;
  try {
    dirFd = fs.openSync(nodePath.dirname(path), 'r');
    fs.fsyncSync(dirFd);
  } catch (err) {
    if (!isIgnorableDirSyncError(err)) throw wrapWriteError(path, err);
  } finally {
    if (dirFd !== undefined) {
      try { fs.closeSync(dirFd); } catch { /* nothing useful to do */ }
    }
  }
}

/**
 * Creates an output folder (and its parents) before any long work starts, so a path that cannot be written fails
 * in the first second rather than after an hour of training or sampling, with a message in the library's terms.
 */
export async function makeFolder(path: string, what: string): Promise<void> {
  // One level at a time, from the nearest existing ancestor down: Node's recursive mkdir never returns where mkdir
  // answers ENOENT under a parent that exists (procfs and sysfs do: `--out /proc/x` hung).
  const missing: string[] = [];
  let at = nodePath.resolve(path);
  for (;;) {
    try {
      if (!(await fsp.stat(at)).isDirectory()) throw Object.assign(new Error(`${at} is a file`), { code: 'ENOTDIR' });
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT' || nodePath.dirname(at) === at) throw folderError(path, what, err);
      missing.push(at);
      at = nodePath.dirname(at);
    }
  }
  for (const folder of missing.reverse()) {
    try {
      await fsp.mkdir(folder);
    } catch (err) {
      // Another process made it meanwhile: fine, if it is a folder.
      const made = (err as NodeJS.ErrnoException).code === 'EEXIST' && (await fsp.stat(folder).then((s) => s.isDirectory(), () => false));
      if (!made) throw folderError(path, what, err);
    }
  }
}

function folderError(path: string, what: string, err: unknown): TarflowError {
  const e = err as NodeJS.ErrnoException;
  let hint = 'check the path and its permissions';
  if (e?.code === 'ENOTDIR' || e?.code === 'EEXIST') hint = 'a file stands where a folder is needed; choose another path or move that file';
  else if (e?.code === 'EACCES' || e?.code === 'EPERM' || e?.code === 'EROFS') hint = 'the place is not writable; choose a folder you can write to';
  return new TarflowError('ERR_TARFLOW_INVALID_ARGUMENT', `${what}: could not create the folder ${JSON.stringify(path)} (${e?.code ?? 'error'}): ${hint}`, { cause: err });
}

/**
 * Refuses a folder that holds anything but what `ignore` accepts (a missing folder is empty): a command that writes
 * many files into it would overwrite files of the same names and leave the others beside its own, where a tool that
 * reads every file in the folder (FID) takes them for its output. `fix` says what to do instead.
 */
export async function checkFolderEmpty(path: string, what: string, fix: string, ignore: (name: string) => boolean = () => false): Promise<void> {
  let names: string[];
  try {
    names = await fsp.readdir(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return;
    if (code !== 'EACCES' && code !== 'EPERM') throw folderError(path, what, err);
    throw new TarflowError('ERR_TARFLOW_INVALID_ARGUMENT', `${what}: the folder ${JSON.stringify(path)} exists but cannot be listed (${code ?? 'error'}); ` +
      'give this user read permission on it (chmod u+r) or choose another folder', { cause: err });
  }
  const held = names.filter((name) => !ignore(name)).sort();
  if (held.length === 0) return;
  const shown = held.slice(0, 3).map((name) => JSON.stringify(name)).join(', ') + (held.length > 3 ? ` and ${held.length - 3} more` : '');
  throw new TarflowError('ERR_TARFLOW_INVALID_ARGUMENT', `${what}: the folder ${JSON.stringify(path)} is not empty (it holds ${shown}); ` +
    `many files are written only into an empty or new folder, so that none is overwritten and no other file is mixed with them: ${fix}`);
}

/**
 * The checks of makeFolder without creating anything: the path is a folder already, or its nearest existing
 * ancestor is a folder this process may write in. A command checks its output first and makes the folder only
 * once its inputs are found, so a refused command fails at once and leaves no empty folder behind.
 */
export async function checkFolderCreatable(path: string, what: string): Promise<void> {
  let at = nodePath.resolve(path);
  for (let looks = 0; ; looks++) {
    let info: fs.Stats;
    try {
      info = await fsp.stat(at);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw folderError(path, what, err);
      const entry = await fsp.lstat(at).catch(() => null);
      // Made by another process since the stat (two runs starting into one folder): look again.
      if (entry && !entry.isSymbolicLink() && looks < 5) continue;
      // A link that points nowhere is there, and mkdir cannot pass it (unless its target appeared meanwhile).
      if (entry) {
        if (await fsp.stat(at).then(() => true, () => false)) continue;
        throw folderError(path, what, Object.assign(new Error(`${at} is a link to nothing`), { code: 'EEXIST' }));
      }
      if (nodePath.dirname(at) === at) throw folderError(path, what, err);
      at = nodePath.dirname(at);
      continue;
    }
    if (!info.isDirectory()) throw folderError(path, what, Object.assign(new Error(`${at} is a file`), { code: 'ENOTDIR' }));
    try {
      await fsp.access(at, fs.constants.W_OK | fs.constants.X_OK);
    } catch (err) {
      // The folder itself is there: "could not create" would send the user looking for a creation problem.
      if (at === nodePath.resolve(path)) {
        const code = (err as NodeJS.ErrnoException).code ?? 'error';
        throw new TarflowError('ERR_TARFLOW_INVALID_ARGUMENT', `${what}: the folder ${JSON.stringify(path)} exists but is not writable (${code}): ` +
          `${code === 'EROFS' ? 'its file system is mounted read-only' : 'its permissions do not let this user write in it'}; ` +
          'make it writable (chmod u+w, or a read-write mount) or choose another folder', { cause: err });
      }
      throw folderError(path, what, err);
    }
    return;
  }
}
