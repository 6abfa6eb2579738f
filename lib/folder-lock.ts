/**
 * Folder locks: one run at a time writes into an output folder. A run claims the folder with a lock file
 * (LOCK_FILE) that names its process; a claim whose process is gone is taken over, behind a gate, and the drafts
 * and gates that killed runs leave are cleared. The writes themselves are atomic.ts.
 */
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as nodePath from 'node:path';
import * as os from 'node:os';
import { TarflowError } from './errors.js';

/** The file that marks an output folder as being written by a run (see lockFolder). */
export const LOCK_FILE = '.tarflow-lock';

/** Whether `name` is a claim of lockFolder, the draft of one, or a takeover gate (each can be left by a killed process). */
export function isLockFileName(name: string): boolean {
  return /^\.tarflow-lock(\.[0-9a-f]{16}|\.takeover(\.takeover)?)?$/.test(name);
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
