/**
 * Atomic file replacement: a reader (or a crash) sees either the old file or the complete new one, never a
 * half-written checkpoint. The temp file lives in the target's folder because rename(2) is only atomic within
 * one file system.
 */
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as nodePath from 'node:path';
import * as os from 'node:os';
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

/** The file that marks an output folder as being written by a run (see lockFolder). */
export const LOCK_FILE = '.tarflow-lock';

/** Whether `name` is a claim of lockFolder, the draft of one, or a takeover gate (each can be left by a killed process). */
export function isLockFileName(name: string): boolean {
  return /^\.tarflow-lock(\.[0-9a-f]{16}|\.takeover(\.takeover)?)?$/.test(name);
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

export interface FolderLock {
  /** Ends the claim (removes the lock file, if it is still this claim's); safe to call twice. */
  release(): Promise<void>;
}

interface LockOwner {
  pid: number;
  host: string;
  started: string;
  /** Tells this claim from a later one of the same process. */
  token: string;
}

/** When this process started: a claim with its pid that is older was left by an earlier process (a container's pid 1). */
const PROCESS_STARTED = Date.now() - process.uptime() * 1000;

/** Whether the claim's process may still be running. */
function ownerAlive(owner: LockOwner): boolean {
  // Another machine's process (a shared network folder) cannot be asked: it counts as running.
  if (owner.host !== os.hostname()) return true;
  if (owner.pid === process.pid) return Date.parse(owner.started) >= PROCESS_STARTED - 1000;
  try {
    process.kill(owner.pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'; // alive, another user's
  }
}

/** The claim in the lock file, or null when it is not one (then no process can be shown to hold it). */
async function readClaim(path: string): Promise<LockOwner | null> {
  // Opened without blocking and looked at before reading: a FIFO put at a lock file's name would make a plain read
  // wait for a writer for good, and a link to a device could read without end. Neither is a claim.
  const handle = await fsp.open(path, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
  let text: string;
  try {
    const info = await handle.stat();
    if (!info.isFile() || info.size > MAX_CLAIM_BYTES) return null;
    text = await handle.readFile('utf8');
  } finally {
    await handle.close();
  }
  const o = JSON.parse(text) as Partial<LockOwner>;
  const valid = Number.isInteger(o.pid) && o.pid! > 0 && typeof o.host === 'string' && typeof o.started === 'string' && typeof o.token === 'string';
  return valid ? (o as LockOwner) : null;
}

/** A claim is one line of JSON (pid, host, start time, token); anything much larger is not one. */
const MAX_CLAIM_BYTES = 4096;

/** Held, by one run at a time, while a dead claim is removed (see takeOver). */
const TAKEOVER_FILE = `${LOCK_FILE}.takeover`;
/** Held, by one run at a time, while a takeover gate left by a dead process is removed (see removeDeadGate). */
const GATE_TAKEOVER_FILE = `${TAKEOVER_FILE}.takeover`;

/** A draft of lockFolder's (`.tarflow-lock.` and its claim's token). */
const DRAFT_FILE = /^\.tarflow-lock\.[0-9a-f]{16}$/;

/** What takeOver did: removed the file judged dead, found another file there (or none), or found its gate held. */
type Takeover = 'removed' | 'changed' | 'busy';

/**
 * Removes the claim file judged dead, if it is still the one judged, and says what it did ('busy': another
 * run is taking it over; look again). Only the holder of the takeover file removes a claim, and a new claim is only
 * ever linked where there is none, so the file found under it cannot be replaced before it is removed: of several
 * runs that found one dead claim, one removes it, and the rest find the winner's claim, alive. Removing it without
 * this (or moving it aside and putting back what was not it) lets a slower run remove the live claim that replaced it.
 * A run killed inside this takeover (milliseconds) leaves the file, which the next run that needs it removes once
 * the file's process is shown gone (removeDeadGate); one it cannot judge so, lockFolder's message names. `gateName`
 * is the gate's file, and says what the file at `path` is: a claim (the takeover gate) or a dead gate (its own gate).
 */
async function takeOver(folder: string, path: string, judged: fs.Stats, owner: LockOwner | null, mine: LockOwner, what: string, gateName = TAKEOVER_FILE): Promise<Takeover> {
  const gate = nodePath.join(folder, gateName);
  try {
    await fsp.writeFile(gate, `${JSON.stringify(mine)}\n`, { flag: 'wx' });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    // The gate of a gate is not looked into: its holder was removing a dead gate, microseconds of work.
    if (gateName === TAKEOVER_FILE && await removeDeadGate(folder, gate, mine, what)) return 'busy';
    await new Promise((resolve) => setTimeout(resolve, 20 + 30 * Math.random()));
    return 'busy';
  }
  let result: Takeover = 'changed';
  try {
    const now = await fsp.stat(path).catch((err: unknown) => {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw err;
    });
    // The same file (a claim linked after it was removed may reuse its inode, so also the same claim or none).
    if (now && now.ino === judged.ino && now.dev === judged.dev && now.mtimeMs === judged.mtimeMs) {
      const still = now.isFile() ? await readClaim(path).catch(() => null) : null;
      if ((still?.token ?? null) === (owner?.token ?? null)) {
        await fsp.rm(path, { force: true });
        result = 'removed';
      }
    }
  } finally {
    await fsp.rm(gate, { force: true });
  }
  return result;
}

/**
 * Removes a takeover gate whose process is gone (SIGKILLed inside its takeover), judged as a claim is: a whole record
 * of a process on this machine that no longer runs. Anything else (a gate being written, another machine's, one of a
 * running process) is left to end on its own or to the message. The removal is itself a takeover, behind a gate of
 * its own, for the reason takeOver gives: of two runs that judged the gate dead, the slower would otherwise remove
 * the live gate of the faster, and two runs would remove claims at once. While a dead gate is there no run can make a
 * new one, so the gate judged is still the one found unless another remover took it first, which the inode and
 * token show. Says whether it removed the gate.
 */
async function removeDeadGate(folder: string, gate: string, mine: LockOwner, what: string): Promise<boolean> {
  let judged: fs.Stats;
  let owner: LockOwner | null;
  try {
    judged = await fsp.stat(gate);
    owner = await readClaim(gate);
  } catch {
    return false; // gone meanwhile, or not written whole yet
  }
  if (!owner || ownerAlive(owner)) return false;
  if ((await takeOver(folder, gate, judged, owner, mine, what, GATE_TAKEOVER_FILE)) !== 'removed') return false;
  process.emitWarning(`tarflow: ${what}: removed ${gate}, the takeover gate of process ${owner.pid} (since ${owner.started}), ` +
    'which no longer runs: it was killed while it claimed the folder', { code: 'TARFLOW_STALE_LOCK' });
  return true;
}

/**
 * Removes the drafts of lockFolder that processes of this machine left when killed (SIGKILL) while they claimed the
 * folder, judged as a claim is. A draft's name holds its claim's token, so no other run ever makes a file of that
 * name: removing it cannot touch anything else (the claim linked from it is another name of the file).
 */
async function removeDeadDrafts(folder: string, mine: LockOwner, what: string): Promise<void> {
  const names = await fsp.readdir(folder).catch(() => [] as string[]);
  for (const name of names) {
    if (!DRAFT_FILE.test(name) || name === `${LOCK_FILE}.${mine.token}`) continue;
    const draft = nodePath.join(folder, name);
    const owner = await readClaim(draft).catch(() => null);
    if (!owner || `${LOCK_FILE}.${owner.token}` !== name || ownerAlive(owner)) continue;
    await fsp.rm(draft, { force: true });
    process.emitWarning(`tarflow: ${what}: removed ${draft}, a draft claim of process ${owner.pid} (since ${owner.started}), which no longer runs`,
      { code: 'TARFLOW_STALE_LOCK' });
  }
}

/**
 * Claims an output folder for one run: two runs into one folder (two processes, or two jobs of one process) would
 * each find it free, then overwrite each other's checkpoints or shards, and each report its own as written. The
 * claim is written whole to a file of its own and hard-linked into place, which fails when a claim is there, so two
 * runs can never both hold it. A claim whose process no longer runs (killed) is removed and taken over, by one run
 * at a time (see takeOver); one from another machine is never (the message says to delete it). Takeover gates and
 * drafts that killed processes of this machine left are removed likewise, with a warning (TARFLOW_STALE_LOCK). The
 * caller checks the folder's contents again once it holds the claim.
 */
export async function lockFolder(folder: string, what: string): Promise<FolderLock> {
  const path = nodePath.join(folder, LOCK_FILE);
  const mine: LockOwner = { pid: process.pid, host: os.hostname(), started: new Date().toISOString(), token: randomBytes(8).toString('hex') };
  const draft = nodePath.join(folder, `${LOCK_FILE}.${mine.token}`);
  const failed = (err: unknown) => new TarflowError('ERR_TARFLOW_INVALID_ARGUMENT',
    `${what}: could not claim ${folder} for this run (${(err as NodeJS.ErrnoException).code ?? (err as Error).message} on ${path}); check that the folder is writable, or delete ${path} if no run is using the folder`, { cause: err });
  try {
    await fsp.writeFile(draft, `${JSON.stringify(mine)}\n`, { flag: 'wx' });
  } catch (err) {
    throw failed(err);
  }
  try {
    // Takeovers and waits for another run's takeover are counted apart: waiting is no failed takeover.
    for (let takeovers = 0, gateWaits = 0; ;) {
      try {
        await fsp.link(draft, path);
        break;
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code !== 'EEXIST' && code !== 'EPERM' && code !== 'ENOTSUP' && code !== 'ENOSYS') throw failed(err);
        if (code !== 'EEXIST') {
          // No hard links on this file system: an exclusive copy, briefly empty, which the age rule below covers.
          try {
            await fsp.copyFile(draft, path, fs.constants.COPYFILE_EXCL);
            break;
          } catch (copyErr) {
            if ((copyErr as NodeJS.ErrnoException).code !== 'EEXIST') throw failed(copyErr);
          }
        }
      }
      let owner: LockOwner | null;
      let judged: fs.Stats;
      try {
        judged = await fsp.stat(path);
        // Not read unless a plain file: reading a FIFO would wait for a writer for good.
        owner = !judged.isFile() ? null : await readClaim(path).catch((err: unknown) => {
          if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw err;
          return null;
        });
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue; // released meanwhile
        throw failed(err);
      }
      // Something that is not a claim (written by hand, or by another tool) is left alone for a while.
      const held = owner ? ownerAlive(owner) : Date.now() - judged.mtimeMs < 10_000;
      if (held || takeovers >= 5) {
        const who = !owner ? 'a lock file that names no process'
          : owner.pid === process.pid && owner.host === mine.host ? 'another job of this process'
          : `process ${owner.pid}${owner.host === mine.host ? '' : ` on ${owner.host}`}`;
        throw new TarflowError('ERR_TARFLOW_INVALID_ARGUMENT', `${what}: ${folder} is being written by another run (${who}${owner ? `, since ${owner.started}` : ''}); ` +
          `wait for it to end or choose another folder. If no run is using it, delete ${path}`);
      }
      try {
        if ((await takeOver(folder, path, judged, owner, mine, what)) === 'busy') gateWaits++;
        else takeovers++;
      } catch (err) {
        throw err instanceof TarflowError ? err : failed(err);
      }
      if (gateWaits > 100) {
        const gates = [TAKEOVER_FILE, GATE_TAKEOVER_FILE].map((name) => nodePath.join(folder, name)).filter((p) => fs.existsSync(p));
        throw new TarflowError('ERR_TARFLOW_INVALID_ARGUMENT', `${what}: another run has been taking over the claim on ${folder} for seconds; ` +
          `if no run is starting in the folder, delete ${gates.length > 0 ? gates.join(' and ') : nodePath.join(folder, TAKEOVER_FILE)}`);
      }
    }
  } finally {
    await fsp.rm(draft, { force: true });
  }
  // Only now, holding the claim. A dead gate matters only to a run that finds a dead claim, and a draft to none, but
  // both would stay in the folder for good. Best effort: a leftover that cannot be removed is no reason to give up
  // the claim just taken.
  await removeDeadGate(folder, nodePath.join(folder, TAKEOVER_FILE), mine, what).catch(() => false);
  await removeDeadDrafts(folder, mine, what).catch(() => undefined);
  let released = false;
  return {
    async release() {
      if (released) return;
      released = true;
      // Only this claim: one deleted by hand and taken by another run stays that run's.
      const current = await readClaim(path).catch(() => null);
      if (current?.token === mine.token) await fsp.rm(path, { force: true });
    },
  };
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
