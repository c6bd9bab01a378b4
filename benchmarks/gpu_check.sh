#!/usr/bin/env bash
# The whole GPU check in one command, for one H100 or H200 (see benchmarks/README.md):
#   benchmarks/gpu_check.sh [OUT_DIR]     (or OUT=...; results as JSON and markdown there)
# CHECK=graphs (the default) measures the CUDA-graph paths against eager, in about 8 minutes:
#   the CUDA tests (tests/test_cuda.py, tests/test_graphs.py); `train --cuda-graphs` of the default
#   preset's 5 epochs and `eval -n 10000 --cuda-graphs` of it; the same 5 epochs eager with seeds 0
#   and 1 (the run-to-run noise of FID), each evaluated alike; bench_speed.py --paths eager,graphs
#   for the default and large presets (step times, the large preset's 30 epochs from its rate);
#   then benchmarks/gpu_summary.py writes summary.json and summary.md with every target.
# CHECK=speed is the earlier plan:
#   1. nvidia-smi and the Python environment (pip install -e . only if the package cannot be imported),
#   2. smoke: 50 training steps on cuda, then a sample grid from that run,
#   3. bench_speed.py --device cuda --full-epochs: throughput, network share, memory and the two
#      targets (the default preset's 5 epochs in < 30 s of training, 10,000 samples in < 5 s),
#   4. optional, for trained runs carried along (ARTIFACTS_DIR): `mnistdiff eval` of each run in
#      EVAL_RUNS at N=EVAL_N (10,000; its eval.json is copied to eval-RUN.json), and
#      bench_samplers.py for SAMPLER_RUN at N=SAMPLER_N (10,000), DDPM first (samplers.json/.md/.png),
#   5. smoke: the same 50 steps with --compile (last: compiling is the slowest step).
# ORDER=quality-first runs step 4 before step 3, for a machine held too briefly for everything.
# The machine may have no internet: the MNIST files must already be in $DATA_DIR/MNIST/raw
# (carry data/MNIST/raw along). Writes at most 6 files to ${OUT:-benchmarks/results}; run
# folders go to a temporary directory. About 4 minutes; every step is cut off at its own limit
# and at the overall budget (BUDGET_S, 295 s). Exit status 1 if any step failed.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT_DIR="${1:-${OUT:-benchmarks/results}}"
CHECK="${CHECK:-graphs}"
EPOCHS="${EPOCHS:-5}"                      # CHECK=graphs: the runs' epochs
read -r -a RUN_ARGS <<<"${RUN_ARGS:-}"     # extra train flags (a CPU dry run: --max-steps 3 --channels 8)
DATA_DIR="${DATA_DIR:-data}"
PY="${PYTHON:-python3}"
BUDGET_S="${BUDGET_S:-$([[ ${CHECK:-graphs} == graphs ]] && echo 470 || echo 295)}"
COMPILE_BENCH="${COMPILE_BENCH:-0}"  # 1: also run the benchmark with --compile (needs a larger budget)
SMOKE_STEPS="${SMOKE_STEPS:-50}"
DEVICE="${DEVICE:-cuda}"  # cpu only to try this script itself out with tiny settings
ARTIFACTS_DIR="${ARTIFACTS_DIR:-artifacts}"
read -r -a EVAL_RUNS <<<"${EVAL_RUNS:-}"
EVAL_N="${EVAL_N:-10000}"
SAMPLER_RUN="${SAMPLER_RUN:-}"
SAMPLER_N="${SAMPLER_N:-10000}"
read -r -a SAMPLER_ARGS <<<"${SAMPLER_ARGS:-}"  # extra flags for bench_samplers.py
ORDER="${ORDER:-speed-first}"
read -r -a BENCH_ARGS <<<"${BENCH_ARGS:-}"  # extra flags for bench_speed.py
mkdir -p "$OUT_DIR"
LOG="$OUT_DIR/gpu_check.log"
: >"$LOG"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
WORK="$(mktemp -d -t mnistdiff-gpu-check.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
FAILED=()

log() { printf '[%s +%3ds] %s\n' "$(date -u +%H:%M:%S)" "$SECONDS" "$*" | tee -a "$LOG"; }

# step NAME LIMIT_S CMD...: run CMD, its output into the log, stopped after LIMIT_S seconds or
# when the overall budget runs out; a failure is logged and the check goes on.
step() {
  local name=$1 limit=$2 left rc t0=$SECONDS
  shift 2
  left=$((BUDGET_S - SECONDS))
  if ((left < 15)); then
    log "SKIP $name: the ${BUDGET_S} s budget is spent"
    FAILED+=("$name (skipped)")
    return 0
  fi
  if ((limit > left)); then limit=$left; fi
  log "START $name (limit ${limit} s)"
  set +e
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  set -e
  if ((rc == 0)); then
    log "OK    $name in $((SECONDS - t0)) s"
  else
    local why=""
    if ((rc == 124 || rc == 137)); then why=" (timed out)"; fi
    log "FAIL  $name: exit $rc after $((SECONDS - t0)) s$why"
    FAILED+=("$name")
  fi
}

log "gpu_check on $(hostname), writing to $OUT_DIR"

# 1. The GPU and the Python environment.
if command -v nvidia-smi >/dev/null; then
  timeout 30 nvidia-smi >"$OUT_DIR/nvidia-smi.txt" 2>&1 || true
  cat "$OUT_DIR/nvidia-smi.txt" >>"$LOG"
  timeout 30 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$LOG" || true
else
  log "no nvidia-smi on this machine"
fi
if ! "$PY" -c 'import torch, mnist_diffusion.cli' >/dev/null 2>&1; then
  log "torch or the package's dependencies are missing: pip install -e . (offline: no build isolation)"
  "$PY" -m pip install --quiet --no-build-isolation -e . 2>&1 | tee -a "$LOG" || log "pip install -e . failed"
fi
"$PY" -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__, torch.version.cuda)' \
  | tee -a "$LOG"
if [[ $DEVICE == cuda ]] && ! "$PY" -c 'import torch; assert torch.cuda.is_available()' 2>>"$LOG"; then
  log "PyTorch sees no CUDA GPU here: nothing to check"
  exit 2
fi
for split in train t10k; do
  for kind in images-idx3 labels-idx1; do
    f="$DATA_DIR/MNIST/raw/$split-$kind-ubyte"
    if [[ ! -f $f && ! -f $f.gz ]]; then
      log "missing $f (or .gz): carry data/MNIST/raw along, this machine cannot download it"
      exit 2
    fi
  done
done

MNISTDIFF=("$PY" -m mnist_diffusion)

graphs_check() {
  local art="$WORK/graphs"
  GRAPHS=()
  [[ $DEVICE == cuda ]] && GRAPHS=(--cuda-graphs)  # DEVICE=cpu: a dry run of this script
  step "CUDA tests" 90 "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_graphs.py
  train_timed graphs 60 ${GRAPHS[@]+"${GRAPHS[@]}"} --seed 0
  eval_run graphs
  step "bench_speed eager and graphs" 150 "$PY" benchmarks/bench_speed.py --device "$DEVICE" \
    --paths "eager$([[ $DEVICE == cuda ]] && echo ,graphs)" --presets default,large --windows 3 --data-dir "$DATA_DIR" --out "$OUT_DIR/speed-$DEVICE.json" \
    ${BENCH_ARGS[@]+"${BENCH_ARGS[@]}"}
  train_timed eager-seed0 150 --seed 0
  eval_run eager-seed0
  train_timed eager-seed1 150 --seed 1
  eval_run eager-seed1
  step "summary" 30 "$PY" benchmarks/gpu_summary.py "$OUT_DIR" "$art"
}

# train_timed NAME LIMIT FLAGS...: the default preset's 5 epochs through the CLI, wall time measured
train_timed() {
  local name=$1 limit=$2 t0
  shift 2
  t0=$(date +%s.%N)
  step "train $name" "$limit" "${MNISTDIFF[@]}" train --device "$DEVICE" --run-name "$name" --epochs "$EPOCHS" "$@" \
    ${RUN_ARGS[@]+"${RUN_ARGS[@]}"} --data-dir "$DATA_DIR" --artifacts-dir "$WORK/graphs"
  echo "{\"run\": \"$name\", \"command_seconds\": $(echo "$(date +%s.%N) - $t0" | bc)}" >"$OUT_DIR/command-$name.json"
}

# eval_run NAME: eval -n 10000 with the default sampler and guidance, graphed; eval.json kept
eval_run() {
  local failed=${#FAILED[@]}
  step "eval $1" 90 "${MNISTDIFF[@]}" eval --run "$1" -n "$EVAL_N" ${GRAPHS[@]+"${GRAPHS[@]}"} --batch-size "$EVAL_N" \
    --device "$DEVICE" --artifacts-dir "$WORK/graphs" --data-dir "$DATA_DIR" --json
  ((${#FAILED[@]} == failed)) || return 0
  cp "$(ls -d "$WORK"/graphs/runs/*-"$1" | tail -1)/eval.json" "$OUT_DIR/eval-$1.json" || log "no eval.json for $1"
}

if [[ $CHECK == graphs ]]; then
  graphs_check
  if ((${#FAILED[@]})); then
    log "done in $SECONDS s; FAILED: $(printf '%s; ' "${FAILED[@]}")"
    exit 1
  fi
  log "done in $SECONDS s; all steps passed. Results: $OUT_DIR/summary.md"
  exit 0
fi

# 2. Smoke: train 50 steps on the GPU and draw a grid from the run.
step "train $SMOKE_STEPS steps" 90 "${MNISTDIFF[@]}" train --device "$DEVICE" --max-steps "$SMOKE_STEPS" \
  --run-name smoke --data-dir "$DATA_DIR" --artifacts-dir "$WORK/eager"
step "sample a grid" 60 "${MNISTDIFF[@]}" sample -n 64 --device "$DEVICE" --artifacts-dir "$WORK/eager" \
  -o "$OUT_DIR/smoke-grid.png"

# 3. The speed benchmark, with the two targets.
speed_bench() {
  step "bench_speed --full-epochs" 200 "$PY" benchmarks/bench_speed.py --device "$DEVICE" --full-epochs \
    --data-dir "$DATA_DIR" --out "$OUT_DIR/speed-$DEVICE.json" ${BENCH_ARGS[@]+"${BENCH_ARGS[@]}"}
}

# 4. Quality of trained runs: eval at N = EVAL_N, and the sampler table at N = SAMPLER_N.
quality() {
  local run
  for run in ${EVAL_RUNS[@]+"${EVAL_RUNS[@]}"}; do
    local failed=${#FAILED[@]} dir
    step "eval $run" 120 "${MNISTDIFF[@]}" eval --run "$run" -n "$EVAL_N" --batch-size 5000 --device "$DEVICE" \
      --artifacts-dir "$ARTIFACTS_DIR" --data-dir "$DATA_DIR"
    ((${#FAILED[@]} == failed)) || continue # no eval.json of an earlier eval
    dir="$("$PY" -c 'import sys; from mnist_diffusion.runs.store import resolve_run; print(resolve_run(*sys.argv[1:]))' \
      "$run" "$ARTIFACTS_DIR")" && cp "$dir/eval.json" "$OUT_DIR/eval-$(basename "$dir").json" || log "no eval.json for $run"
  done
  if [[ -n $SAMPLER_RUN ]]; then
    step "bench_samplers $SAMPLER_RUN" 240 "$PY" benchmarks/bench_samplers.py --run "$SAMPLER_RUN" --device "$DEVICE" \
      --n "$SAMPLER_N" --ddpm-first --no-progress --artifacts-dir "$ARTIFACTS_DIR" --data-dir "$DATA_DIR" \
      --out "$OUT_DIR/samplers" ${SAMPLER_ARGS[@]+"${SAMPLER_ARGS[@]}"}
  fi
}

if [[ $ORDER == quality-first ]]; then
  quality
  speed_bench
else
  speed_bench
  quality
fi

# 5. Smoke: the same 50 steps through torch.compile, and a grid from that run.
step "train $SMOKE_STEPS steps --compile" 150 "${MNISTDIFF[@]}" train --device "$DEVICE" --max-steps "$SMOKE_STEPS" \
  --compile --run-name smoke-compiled --data-dir "$DATA_DIR" --artifacts-dir "$WORK/compiled"
step "sample a grid (compiled run)" 45 "${MNISTDIFF[@]}" sample -n 64 --device "$DEVICE" \
  --artifacts-dir "$WORK/compiled" -o "$OUT_DIR/smoke-grid-compiled.png"
if [[ $COMPILE_BENCH == 1 ]]; then
  step "bench_speed --compile on" 200 "$PY" benchmarks/bench_speed.py --device "$DEVICE" --compile on --presets default \
    --data-dir "$DATA_DIR" --out "$OUT_DIR/speed-$DEVICE-compiled.json" ${BENCH_ARGS[@]+"${BENCH_ARGS[@]}"}
fi

if ((${#FAILED[@]})); then
  log "done in $SECONDS s; FAILED: $(printf '%s; ' "${FAILED[@]}")"
  exit 1
fi
log "done in $SECONDS s; all steps passed. Results: $OUT_DIR/speed-$DEVICE.md"
