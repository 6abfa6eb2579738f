#!/usr/bin/env bash
# The one GPU check, for a machine with an NVIDIA GPU. Stage it here with scripts/gpu-kit.sh, which prints the device
# command (it unpacks .device-kit/payload.tar.xz, then runs this script).
# Expects the CUDA addon already built (build-cuda/Release/tarflow_cuda.node; TARFLOW_GPU_CHECK_BUILD=1 rebuilds it
# here first with npm run build:cuda) and compiled JavaScript in dist/ (npm run build).
# Steps, most telling first: device and addon check; the CUDA-vs-CPU parity test (float32, float64 and bf16: ops,
# grids past 65535 tiles, whole models, the bf16 sampler); the test suite with TARFLOW_DEVICE=cuda; compute-sanitizer
# memcheck on a small training, sampling and denoising run in fp32 and bf16; 2 epochs of MNIST against the CPU's
# bits/dim; the GPU targets table (npm run bench -- --only targets); racecheck and synccheck; the op fuzzer under
# memcheck; rough timings of the small run per backend and precision. GPU_CHECK_STEPS="parity suite-cuda ..." runs only the named steps (addon
# always runs); "train-bpd" (only when named) trains the mnist-bpd likelihood model on the GPU.
# GPU_CHECK_BUDGET_S (default 540) bounds the whole run: each step gets at most what is left, and steps that no
# longer fit are reported as skipped, so the table always prints within the device tool's per-call limit.
# Full logs go to $OUT/gpu-check/ (or ./gpu-check-logs/); a short table is printed last. Exits non-zero when any
# step failed.
set -uo pipefail
cd "$(dirname "$0")/.."
logs="${OUT:-$PWD}/gpu-check"
[ -n "${OUT:-}" ] || logs="$PWD/gpu-check-logs"
mkdir -p "$logs"
results=()
failed=0
deadline=$(( $(date +%s) + ${GPU_CHECK_BUDGET_S:-540} ))
golden="${TARFLOW_GOLDEN_DIR:-$([ -d .golden ] && echo "$PWD/.golden" || echo "$PWD/../shared/reference")}"

wanted() {  # wanted NAME: the step runs (GPU_CHECK_STEPS unset, or naming it; addon always)
  [ -z "${GPU_CHECK_STEPS:-}" ] || [ "$1" = addon ] || [[ " $GPU_CHECK_STEPS " == *" $1 "* ]]
}

step() {  # step NAME TIMEOUT_S COMMAND...
  local name=$1 limit=$2
  shift 2
  wanted "$name" || return
  local left=$(( deadline - $(date +%s) ))
  if [ "$left" -lt 15 ]; then
    results+=("$(printf '%-22s %-12s' "$name" 'SKIP (out of time)')")
    return
  fi
  [ "$limit" -le "$left" ] || limit=$left
  local log="$logs/$name.log" start end rc
  start=$(date +%s.%N)
  timeout "$limit" "$@" > "$log" 2>&1
  rc=$?
  end=$(date +%s.%N)
  local secs
  secs=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')
  local status=PASS
  if [ $rc -ne 0 ]; then status="FAIL(rc=$rc)"; failed=1; fi
  results+=("$(printf '%-22s %-12s %8ss  %s' "$name" "$status" "$secs" "$(tail -n 1 "$log" | cut -c1-80)")")
  echo "== $name: $status ($secs s)"
  if [ $rc -ne 0 ]; then tail -n 30 "$log"; fi
}

export TARFLOW_QUIET=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$logs/nvidia-smi.log" 2>&1 || true

if [ "${TARFLOW_GPU_CHECK_BUILD:-0}" = "1" ]; then
  step build 900 env TARFLOW_CUDA_ARCH="${TARFLOW_CUDA_ARCH:-90a-real}" npm run build:cuda
fi

step addon 60 node -e "
  const a = require('./build-cuda/Release/tarflow_cuda.node');
  const info = a.deviceInfo();
  console.log(JSON.stringify(info));
  if (a.backend !== 'cuda' || a.deviceCount() < 1) process.exit(1);"

# Steps in order of what they prove, with limits that keep a hung step from taking the whole budget: parity and
# the suite (issue 3), memcheck (issues 3 and 6), 2 epochs against the CPU (issue 3), the targets table (issue 4),
# racecheck and synccheck (issue 6), then rough timings.
# The GPU's bf16 results are checked against the CPU's reference kernel (TARFLOW_CPU_GEMM=reference), not against
# AMX where the host has it: AMX sums in yet another order.
step parity 150 env TARFLOW_EXPECT_GPU=1 TARFLOW_CPU_GEMM=reference TARFLOW_GOLDEN_DIR="$golden" \
  node node_modules/uvu/bin.js dist/test 'cuda-parity\.test\.js$'

# The suite with the CUDA backend as the default device (tests that pin 'cpu' stay on the CPU); the parity file
# ran in the step before, where a missing GPU is a failure.
step suite-cuda 180 env TARFLOW_DEVICE=cuda TARFLOW_GOLDEN_DIR="$golden" \
  node node_modules/uvu/bin.js dist/test '^(?!cuda-parity).*\.test\.js$'

sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)
under_sanitizer() {  # under_sanitizer NAME TOOL LIMIT_S [VAR=VALUE...] COMMAND...: a step run under compute-sanitizer
  local name=$1 tool=$2 limit=$3
  shift 3
  wanted "$name" || return
  if [ -z "$sanitizer" ]; then
    results+=("$(printf '%-22s %-12s' "$name" 'SKIP (no compute-sanitizer)')")
    return
  fi
  local vars=()
  while [[ "${1:-}" == *=* ]]; do vars+=("$1"); shift; done
  # TARFLOW_CUDA_SYNC=1: every op waits, so a fault is reported by the op that caused it.
  step "$name" "$limit" env TARFLOW_CUDA_SYNC=1 ${vars[@]+"${vars[@]}"} "$sanitizer" --tool "$tool" --error-exitcode 9 --print-limit 20 "$@"
}
# A training step, a guided sampling run and the score step, in fp32 and bf16. synccheck: barriers reached by only
# part of a block.
sanitize() { under_sanitizer "$1" "$1" 90 node scripts/gpu-smoke.mjs cuda 1 both; }
sanitize memcheck

# Issue 3: 2 epochs of the small MNIST preset on the GPU reach the CPU's test bits/dim within 0.02 (fp32 and bf16).
step two-epochs 120 node scripts/two-epochs.mjs cuda fp32 bf16

# The issue-4 table: every row in one process; rows that fail (out of memory, say) say so in the table.
step targets 200 node dist/bench/run.js --device cuda --only targets --quick
cat "$logs/targets.log" 2>/dev/null | sed -n '/^GPU targets/,$p'

sanitize racecheck
sanitize synccheck

# Issue 6: the op fuzzer's damaged calls (odd shapes, empty and 2^20-long dimensions, views) on the GPU under
# memcheck, which reports out-of-bounds accesses that do not fault.
under_sanitizer op-fuzz-memcheck memcheck 120 TARFLOW_OP_FUZZ_DEVICE=cuda TARFLOW_OP_FUZZ_CASES=1000 \
  node node_modules/uvu/bin.js dist/test 'op-fuzz\.test\.js$'

step smoke-cuda 60 node scripts/gpu-smoke.mjs cuda 20 fp32
step smoke-cuda-bf16 60 node scripts/gpu-smoke.mjs cuda 20 bf16
step smoke-cpu 60 node scripts/gpu-smoke.mjs cpu 5 fp32

# Opt-in, only when GPU_CHECK_STEPS names it: trains the mnist-bpd likelihood model (the CPU run's config: patch 2,
# width 128, 4 blocks x 2 layers, uniform dequantization) for 5000 steps of 256 images (21 epochs) on the GPU and
# brings back its checkpoint ($OUT/bpd/checkpoint.safetensors; the training state is too large to come back).
# Checkpoints every 500 steps, so a run cut by its time limit still returns the last one.
if [[ " ${GPU_CHECK_STEPS:-} " == *" train-bpd "* ]]; then
  bpd_dir=$(mktemp -d)
  echo '{"in_channels":1,"img_size":28,"patch_size":2,"channels":128,"num_blocks":4,"layers_per_block":2,"nvp":true,"num_classes":0}' > "$bpd_dir/config.json"
  step train-bpd 480 node dist/lib/cli.js train --device cuda --config "$bpd_dir/config.json" --unconditional --noise uniform \
    --batch-size 256 --steps 5000 --lr 1e-3 --warmup-steps 200 --clip-grad-norm 1 --seed 0 --checkpoint-every 500 --out "$bpd_dir/run"
  mkdir -p "${OUT:-$PWD}/bpd" && cp "$bpd_dir/run/checkpoint.safetensors" "${OUT:-$PWD}/bpd/" 2>/dev/null || true
fi

echo
echo "GPU check ($(head -n 1 "$logs/nvidia-smi.log" 2>/dev/null)); logs in $logs"
printf '%-22s %-12s %9s  %s\n' step status time "last line"
for r in "${results[@]}"; do echo "$r"; done
exit $failed
