#!/usr/bin/env bash
# Stages everything scripts/gpu-check.sh needs on the device machine (which has no Node.js and no registry) into
# .device-kit/, within the device tool's 64 MiB carry limit: the Node.js kit (../shared/device/stage.sh) and
# payload.tar.xz with the compiled JavaScript, both addons, the runtime node_modules (compilers and type packages
# left out) and the golden files (as .golden/, since ../shared may not be there). Prints the device command.
set -euo pipefail
cd "$(dirname "$0")/.."
npx tsc -p .
# Both builds are incremental, so what travels is never older than the sources.
if [ -f build/Makefile ]; then make -C build -j 2 BUILDTYPE=Release > /dev/null; else npm run build:native > /dev/null; fi
TARFLOW_CUDA_ARCH="${TARFLOW_CUDA_ARCH:-90a-real}" npm run build:cuda > /dev/null
bash ../shared/device/stage.sh > /dev/null
rm -rf .golden && mkdir .golden
cp "${TARFLOW_GOLDEN_DIR:-../shared/reference}"/golden-*.safetensors .golden/
tar -cJf .device-kit/payload.tar.xz \
  --exclude=node_modules/typescript --exclude=node_modules/@types --exclude=node_modules/cmake-js \
  --exclude=node_modules/node-gyp --exclude=node_modules/.cache \
  dist build/Release/tarflow_cpu.node build-cuda/Release/tarflow_cuda.node node_modules .golden
rm -rf .golden
size=$(du -sm .device-kit | cut -f1)
echo "staged ${size} MiB in .device-kit/ (the carry limit is 64 MiB)"
[ "$size" -lt 64 ] || { echo "too large to carry" >&2; exit 1; }
cat <<'CMD'
device run: carry [".device-kit"], timeout_s 600, command:
  source .device-kit/enter.sh && tar -xJf .device-kit/payload.tar.xz && bash scripts/gpu-check.sh
CMD
