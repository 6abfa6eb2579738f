#!/usr/bin/env node
// Builds the optional CUDA backend (build-cuda/Release/tarflow_cuda.node) with cmake-js. Runs from package.json's
// install script after the CPU addon. The CPU package must always install, so a missing nvcc or a failed build
// only prints a line and exits 0, unless TARFLOW_REQUIRE_CUDA=1 (npm run build:cuda, CI), which makes a failure
// exit non-zero.
//
// Environment: TARFLOW_CUDA_ARCH (CMake architectures, default "90a-real;90-virtual;80-real"),
// TARFLOW_SKIP_CUDA=1 (do not build), TARFLOW_CUDA_JOBS (parallel compile jobs, default: number of cores).
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, renameSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { delimiter, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(import.meta.url);
const required = process.env.TARFLOW_REQUIRE_CUDA === '1';

// Why the last install did or did not build the addon, for the runtime's "running on the CPU" line
// (lib/backend.ts reads it): a missing addon can mean no nvcc, an opt-out or a failed build, and each has its own fix.
function recordStatus(built, reason) {
  const dir = join(root, 'build-cuda');
  mkdirSync(dir, { recursive: true });
  const file = join(dir, 'install-status.json');
  writeFileSync(`${file}.tmp`, JSON.stringify({ built, reason, at: new Date().toISOString() }) + '\n');
  renameSync(`${file}.tmp`, file);
}

function skip(message, reason) {
  console.log(`tarflow: ${message}`);
  recordStatus(false, reason);
  process.exit(required ? 1 : 0);
}

function findOnPath(name) {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (dir && existsSync(join(dir, name))) return join(dir, name);
  }
  return undefined;
}

if (process.env.TARFLOW_SKIP_CUDA === '1' && !required) {
  console.log('tarflow: TARFLOW_SKIP_CUDA=1; skipping the CUDA backend (CPU only)');
  recordStatus(false, 'it was skipped at install (TARFLOW_SKIP_CUDA=1); run `npm run build:cuda` to build it');
  process.exit(0);
}

let nvcc = findOnPath('nvcc');
if (!nvcc && existsSync('/usr/local/cuda/bin/nvcc')) nvcc = '/usr/local/cuda/bin/nvcc';
if (!nvcc) skip('nvcc not found; skipping the CUDA backend (CPU only)', 'nvcc was not found at install; put the CUDA toolkit\'s bin on the PATH and run `npm run build:cuda`');

let cmakeJs;
try {
  cmakeJs = join(dirname(require.resolve('cmake-js/package.json')), 'bin', 'cmake-js');
} catch {
  skip('cmake-js is not installed; skipping the CUDA backend (CPU only)', 'cmake-js was not installed; run `npm install` and then `npm run build:cuda`');
}

const env = { ...process.env, CUDACXX: process.env.CUDACXX ?? nvcc };
// cmake's check_language(CUDA) looks for nvcc on PATH (or CUDACXX): make /usr/local/cuda/bin visible too.
env.PATH = `${dirname(nvcc)}${delimiter}${process.env.PATH ?? ''}`;
const jobs = process.env.TARFLOW_CUDA_JOBS ?? String(Math.max(1, cpus().length));
// Its own folder, not build/: 'node-gyp rebuild' (npm run build:native) empties build/ and would drop this addon.
const out = 'build-cuda';
const output = join(root, out, 'Release', 'tarflow_cuda.node');

console.log(`tarflow: building the CUDA backend with ${nvcc} (architectures: ${process.env.TARFLOW_CUDA_ARCH || 'default'})`);
const started = Date.now();
// Configure every time (a few seconds), so a changed TARFLOW_CUDA_ARCH or toolkit is picked up; the build itself is
// incremental. CMakeLists.txt reads TARFLOW_CUDA_ARCH from the environment.
let result = spawnSync(process.execPath, [cmakeJs, 'configure', '--out', out], { cwd: root, env, stdio: 'inherit' });
if (result.status === 0) {
  result = spawnSync(process.execPath, [cmakeJs, 'build', '--out', out, '--parallel', jobs], { cwd: root, env, stdio: 'inherit' });
}
const seconds = ((Date.now() - started) / 1000).toFixed(0);

if (result.status !== 0 || !existsSync(output)) {
  const why = result.error
    ? result.error.message
    : result.status === 0
      ? 'CMake found no usable CUDA compiler'
      : `cmake-js exited with ${result.status ?? result.signal}`;
  const line = `tarflow: WARNING: the CUDA backend failed to build (${why}); the CPU backend is installed and works`;
  recordStatus(false, `its build failed at install (${why}); run \`npm run build:cuda\` to see the compiler's errors`);
  if (required) {
    console.error(line.replace('WARNING', 'ERROR') + ' (TARFLOW_REQUIRE_CUDA=1)');
    process.exit(1);
  }
  console.warn(line);
  process.exit(0);
}
recordStatus(true, 'built');
console.log(`tarflow: CUDA backend built in ${seconds} s: ${output}`);
