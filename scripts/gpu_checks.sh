#!/usr/bin/env bash
# Every GPU check and timing of hadabench in one command, in stages that each have a time
# limit, so that one call on a borrowed GPU returns whatever finished:
#
#     scripts/gpu_checks.sh [OUT_DIR]          (default: gpu-checks; run from the repository root)
#     BUDGET=500 scripts/gpu_checks.sh OUT     (all stages within 500 s: each gets the smaller of
#                                               its limit and what is left; under 20 s, skipped)
#
# Needs a CUDA GPU, triton and diffusers; `hadabench` installed (its transforms are entry
# points). Writes OUT_DIR/log-<time> (everything) and OUT_DIR/tiny-<kernel>-<time>.json (the
# end-to-end runs), and prints the verdicts, the performance table and the paired
# comparisons. The stages' limits add up to 19 minutes; on one H200 (2026-11-30) they took
# 85 s, 95 s, over 70 s (stopped there), 150 s and 130 s.
set -u
py=${PYTHON:-python3}  # the interpreter that has torch (python3 on the lent GPU machines)
"$py" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 2)" ||
    { echo "gpu_checks.sh: no CUDA device here (on the CPU, tests/test_kernels.py runs the same checks)" >&2; exit 2; }
out=${1:-gpu-checks}
stamp=$(date +%Y%m%d-%H%M%S)  # a new log per call: an earlier one stays
mkdir -p "$out"
log=$out/log-$stamp
deadline=$(( $(date +%s) + ${BUDGET:-100000} ))  # a lease's device time: the whole call's limit
stage() {  # stage SECONDS COMMAND...: run it with a time limit, its output to the log
    local limit=$1 left=$(( deadline - $(date +%s) - 5 ))
    shift
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -lt 20 ]; then echo "=== [$(date +%T)] SKIPPED (budget spent): $*" | tee -a "$log"; return; fi
    echo "=== [$(date +%T)] $* (limit ${limit} s)" | tee -a "$log"
    timeout "$limit" "$@" >>"$log" 2>&1
    echo "=== exit $? [$(date +%T)]" | tee -a "$log"
}
export PYTHONUNBUFFERED=1
# 1. the fused kernel at its default dot precision: every case (480)
stage 170 "$py" -m scripts.gpu_check --paths split3
# 2. the compiled path (--kernel compile): a graph per case, so a subset
stage 150 "$py" -m scripts.gpu_check --paths compile --dtypes fp32 bf16 --bits 4 None \
    --cases 64-full 1152-full-signs 4608-full 1152-block128 1152-none 4608-block128-signs
# 3. the other dot precisions, on the rotations
stage 150 "$py" -m scripts.gpu_check --paths tf32x3 ieee --dtypes fp32 bf16 --bits 4 None \
    --cases 128-full-signs 1152-full 4608-full-signs 4608-block128-signs
# 4. bandwidth of the online part, and a PixArt-Sigma-sized step per transform and path
stage 240 "$py" -m scripts.gpu_perf --iters 5
# 5. end to end on a tiny PixArt-Sigma pipeline, once per path, fresh calibration each time
tiny=$(mktemp -d)
trap 'rm -rf "$tiny"' EXIT
"$py" -c "from benchmark.families.examples import save_tiny; save_tiny('pixart-sigma', '$tiny/model')" >>"$log" 2>&1
for kernel in torch triton compile; do
    stage 120 "$py" -m benchmark run --model "$tiny/model" --steps 8 --eval-size 16 --calib-size 4 \
        --metrics sqnr --precisions w4a4 --transforms none,smoothquant,quarot,hadanorm --device cuda \
        --kernel $kernel --out "$tiny/$kernel" --cache-dir "$tiny/cache-$kernel" --fresh
    cp "$tiny/$kernel/results.json" "$out/tiny-$kernel-$stamp.json" 2>/dev/null
done
for kernel in triton compile; do
    stage 30 "$py" -m benchmark compare "$tiny/torch" "$tiny/$kernel"
done
echo "--- verdicts"
grep -E "^(===|FAIL|ALL PASS|[0-9]+ FAILED|device:)|: FAILED" "$log"
echo "--- performance"
sed -n '/^what  /,/^PixArt step w4a4 hadanorm/p' "$log"
echo "--- paired comparisons"
awk '/^SQNR/ {p = 1; blank = 0} p {print} p && /^$/ && ++blank == 2 {p = 0}' "$log"  # title, notes, table
