#!/usr/bin/env bash
# Builds the CPU addon with AddressSanitizer and UndefinedBehaviorSanitizer in a scratch copy of the repository
# (the normal build stays untouched) and runs the native-heavy test files against it. Any out-of-bounds access,
# use after free or undefined behaviour in the kernels stops the run with a report. float-cast-overflow (a double
# outside an integer's range converted to it) is named on its own: GCC leaves it out of 'undefined'.
#   npm run test:sanitize
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/tarflow-sanitize.XXXXXX")"
trap 'rm -rf "$work"' EXIT
cd "$root"
git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -xf - -C "$work"
ln -s "$root/node_modules" "$work/node_modules"
cd "$work"
echo "== building the sanitizer flavour in $work"
CXXFLAGS="-fsanitize=address,undefined,float-cast-overflow -fno-omit-frame-pointer -g" LDFLAGS="-fsanitize=address,undefined" \
  npm run build:native -- -j 2 >build.log 2>&1 || { tail -40 build.log; exit 1; }
npx tsc -p .
export TARFLOW_GOLDEN_DIR="${TARFLOW_GOLDEN_DIR:-$root/../shared/reference}"
export TARFLOW_QUIET=1 ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
# Node itself is not instrumented: the runtimes are preloaded so the addon's instrumentation finds them.
export LD_PRELOAD="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)"
node node_modules/uvu/bin.js dist/test '(golden|gradcheck|model|train|formats|generate|ops|op-fuzz|bf16)\.test\.js$'
