#!/usr/bin/env bash
# Every device measurement of issue 11 in one prepared run, at most ~8 minutes on one H100/H200:
#   bench/gpu.sh            full size on the GPU (random bf16 weights built on the device; nothing downloaded)
#   bench/gpu.sh --smoke    the same steps at narrow size on the CPU (tests this script; timings meaningless)
# Prints everything and appends every table to $OUT/gpu-figures.md (default OUT=/tmp/zsearch-gpu); the
# ~21 GB random model folder of step 4 goes to $WORK (default /tmp/zsearch-gpu-work), never under $OUT.
# Steps, most important first; each has its own time limit, and all together stop at BUDGET seconds:
#   1. eager: bare, side, fused, naive diffusers: s/image, s/trial, set-weighting time, CLIP ViT-L-14
#      scoring time, peak GPU memory per way at batch 1 and 4 (memory full, bf16)
#   2. memory fp8, 3. memory offload: bare and side, the same figures and peaks at batch 1 and 4
#   4. one whole `zsearch run` of 5 trials on a full-size random model folder (save_pretrained, then load)
#   5. cheaper screening: Spearman of half steps / half size renders with full ones on step 4's
#      config (random weights: the agreement of a random model, the cost of each fidelity)
#   6. compiled (regional compile of the repeated blocks): side and bare, then fused and naive;
#      each way's first trial carries its compile warm-up
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
SMOKE=0
[[ "${1:-}" == "--smoke" ]] && SMOKE=1
OUT="${OUT:-/tmp/zsearch-gpu}"
BUDGET="${BUDGET:-470}"
WORK="${WORK:-/tmp/zsearch-gpu-work}"
mkdir -p "$OUT" "$WORK"
MD="$OUT/gpu-figures.md"
PY="${PYTHON:-python3}"

if [[ $SMOKE == 1 ]]; then
  FULL=(--full --device cpu --dim 256 --layers 2 --refiner-layers 1 --size 64 --steps 1 --images 1 --clip ViT-S-32
        --threads 1)
  PEAKS=(--peak-batches 1,2)
  COMPILE=(--compile --compile-backend aot_eager)  # inductor on a CPU would spend minutes compiling
  RUN=(--smoke --device cpu)
  LIMITS=(300 300 300 900 300 300)
  FIDELITY_WEIGHTINGS=3
  RUNS=(--trials 1 --warmup 0)  # one timed trial a way: the script is what is tested
  RUNS_ONE=(--trials 1 --warmup 0)
  BUDGET="${BUDGET_SMOKE:-2400}"
  LABEL="SMOKE (CPU, narrow models: timings meaningless)"
else
  if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "bench/gpu.sh: no CUDA device here; run bench/gpu.sh --smoke to test the script on the CPU" >&2
    exit 2
  fi
  FULL=(--full --images 4)
  PEAKS=(--peak-batches 1,4)
  COMPILE=(--compile)
  RUN=()
  LIMITS=(150 80 100 160 200 120)
  FIDELITY_WEIGHTINGS=6
  RUNS=(--trials 2 --warmup 1)
  RUNS_ONE=(--trials 1 --warmup 1)
  LABEL="full size"
fi

deadline=$((SECONDS + BUDGET))
{
  echo "## bench/gpu.sh — $(date -u '+%Y-%m-%d %H:%M UTC') — $LABEL"
  echo
  "$PY" - <<'PY'
import torch, diffusers, platform
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
mem = f", {torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB" if torch.cuda.is_available() else ""
print(f"device: {gpu}{mem}; torch {torch.__version__}, diffusers {diffusers.__version__}, python {platform.python_version()}")
PY
  echo
} | tee -a "$MD"

step() {  # step NAME OWN_LIMIT COMMAND...: run with min(own limit, time left), report its exit code and time
  local name=$1 own=$2
  shift 2
  local left=$((deadline - SECONDS))
  local limit=$((own < left ? own : left))
  if ((limit < 20)); then
    echo "- $name: SKIPPED (the ${BUDGET} s budget is spent)" | tee -a "$MD"
    return
  fi
  echo "== $name (limit ${limit} s)"
  local start=$SECONDS
  timeout --signal=INT --kill-after=15 "$limit" "$@"
  local rc=$?
  local note=""
  ((rc == 124 || rc == 130 || rc == 137)) && note=" — CUT at its time limit: its table is missing above; see the per-way lines printed"
  echo "- $name: exit $rc in $((SECONDS - start)) s$note" | tee -a "$MD"
  echo | tee -a "$MD" >/dev/null
}

TRIAL=("$PY" bench/trial.py --markdown "$MD")
step "1 eager ways, memory full" "${LIMITS[0]}" "${TRIAL[@]}" "${FULL[@]}" "${PEAKS[@]}" "${RUNS[@]}" \
  --ways bare,side,fused,naive --json "$OUT/eager.json"
step "2 memory fp8" "${LIMITS[1]}" "${TRIAL[@]}" "${FULL[@]}" "${PEAKS[@]}" --memory fp8 "${RUNS[@]}" \
  --ways bare,side --json "$OUT/fp8.json"
step "3 memory offload" "${LIMITS[2]}" "${TRIAL[@]}" "${FULL[@]}" "${PEAKS[@]}" --memory offload "${RUNS_ONE[@]}" \
  --ways bare,side --json "$OUT/offload.json"
step "4 zsearch run, 5 trials" "${LIMITS[3]}" "$PY" bench/fullrun.py --out "$WORK/fullrun" --markdown "$MD" "${RUN[@]}"
step "5 cheaper screening: fidelity agreement" "${LIMITS[5]}" "$PY" bench/fidelity.py --config "$WORK/fullrun/full.yaml" \
  --weightings "$FIDELITY_WEIGHTINGS" --markdown "$MD"
step "6a compiled side, bare" "${LIMITS[4]}" "${TRIAL[@]}" "${FULL[@]}" "${COMPILE[@]}" "${RUNS_ONE[@]}" \
  --ways side,bare --json "$OUT/compiled-a.json"
step "6b compiled fused, naive" "${LIMITS[4]}" "${TRIAL[@]}" "${FULL[@]}" "${COMPILE[@]}" "${RUNS_ONE[@]}" \
  --ways fused,naive --json "$OUT/compiled-b.json"

echo
echo "bench/gpu.sh: done in ${SECONDS} s; the tables are in $MD"
cat "$MD"
