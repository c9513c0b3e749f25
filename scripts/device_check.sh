#!/usr/bin/env bash
# GPU readiness in one command: the CUDA-marked tests, the benchmark at the paper's Appendix E sizes (batch
# 16/32/64 at 224, batch 32 at 288/448, CUDA peak memory), a short fine-tune in each mode, then the compiled
# peers at 32 x 224 (last: compiling takes longest); ends with one summary table (also in OUT/summary.md;
# `python -m tllib_tune.benchmark.device_summary OUT` rebuilds it from what a run cut short left).
#
#   scripts/device_check.sh                      # on the GPU; writes benchmarks/cuda-<date>/
#   scripts/device_check.sh --device cpu --out /tmp/check --steps 2 --finetune-modes tune   # tiny, on the CPU
#
# Options: --device cuda|cpu (cpu: resnet18 at 32 px, compiled modes through aot_eager), --out DIR,
# --steps N (fine-tune steps per mode, default 20), --finetune-modes "train eval tune deploy inplace-abn",
# --no-compile (leave the compiled peers out). Exit status: 0 when every step passed, else 1.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then  # the first of python, python3 that imports torch (some GPU images have only python3)
  for candidate in python python3; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c "import torch" >/dev/null 2>&1; then
      PY="$candidate"; break
    fi
  done
  [ -n "$PY" ] || { echo "device_check.sh: error: no python or python3 on PATH imports torch; set PYTHON=/path/to/python" >&2; exit 2; }
fi
DEVICE=cuda
OUT=""
STEPS=20
FT_MODES="train eval tune deploy inplace-abn"
COMPILE=1
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --steps) STEPS="$2"; shift 2 ;;
    --finetune-modes) FT_MODES="$2"; shift 2 ;;
    --no-compile) COMPILE=0; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "device_check.sh: error: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$DEVICE" in cuda*|cpu) ;; *) echo "device_check.sh: error: --device $DEVICE: use cuda or cpu" >&2; exit 2 ;; esac
OUT="${OUT:-$ROOT/benchmarks/$DEVICE-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT" || { echo "device_check.sh: error: --out $OUT: cannot create it" >&2; exit 2; }
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
cd "$ROOT"
failed=0
step() { echo; echo "== [${SECONDS}s] $*"; }  # seconds since the start: where the time goes

if [ "$DEVICE" = cpu ]; then
  ARCH=resnet18; SETTINGS=2x32; COMPILED_SETTINGS=2x32; BACKEND=aot_eager; REPEATS=1; WARMUP=0
  FT=(-a resnet18 --input-size 32 -b 4 -j 0)
else
  ARCH=resnet50; SETTINGS=16x224,32x224,64x224,32x288,32x448; COMPILED_SETTINGS=32x224; BACKEND=inductor
  REPEATS=10; WARMUP=3
  FT=(-a resnet50 --input-size 224 -b 32 -j 0)  # no loader workers: containers' /dev/shm is often too small
fi

step "cuda-marked tests on $DEVICE"
TLLIB_TUNE_TEST_DEVICE="$DEVICE" "$PY" -m pytest -q -m cuda tests/cuda -p no:cacheprovider 2>&1 | tee "$OUT/pytest.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || failed=1

step "benchmark: $ARCH at $SETTINGS"
"$PY" scripts/benchmark_modes.py --arch "$ARCH" --device "$DEVICE" --settings "$SETTINGS" \
  --modes train,eval,tune,deploy,inplace-abn,eval+ckpt,tune+ckpt --repeats "$REPEATS" --warmup "$WARMUP" \
  --no-plot --out "$OUT/bench-modes" || failed=1

for mode in $FT_MODES; do
  step "fine-tune: $STEPS steps in $mode"
  "$PY" examples/finetune.py -d synthetic --root "$OUT/synthetic" --pretrained none --mode "$mode" \
    "${FT[@]}" --iters-per-epoch "$STEPS" --epochs 1 --device "$DEVICE" --log "$OUT/finetune/$mode" || failed=1
done

if [ "$COMPILE" = 1 ]; then
  step "benchmark: compiled peers at $COMPILED_SETTINGS ($BACKEND)"
  "$PY" scripts/benchmark_modes.py --arch "$ARCH" --device "$DEVICE" --settings "$COMPILED_SETTINGS" \
    --modes eval,tune,deploy,compiled-pass,compiled-tune,compiled-deploy --compile-backend "$BACKEND" \
    --repeats "$REPEATS" --warmup "$WARMUP" --no-plot --out "$OUT/bench-compiled" || failed=1
fi

step "summary"
"$PY" -m tllib_tune.benchmark.device_summary "$OUT" || failed=1
[ "$failed" = 0 ] && echo "device check passed in ${SECONDS}s: $OUT" || echo "device check FAILED (see above) after ${SECONDS}s: $OUT"
exit "$failed"
