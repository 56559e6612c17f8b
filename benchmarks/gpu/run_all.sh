#!/usr/bin/env bash
# The GPU tier on one CUDA device (prepared for an NVIDIA H200): every part in its own process with a time limit,
# everything under one results folder.
#
#   bash benchmarks/gpu/run_all.sh [RESULTS_DIR] [BUDGET_SECONDS]
#
#   RESULTS_DIR     default benchmarks/results/gpu-cuda
#   BUDGET_SECONDS  default 480 (8 minutes): a part starts only while the budget lasts, and is given at most what
#                   is left of it (its own limit otherwise); parts past the budget are listed as skipped
#   GPU_PARTS       optional comma list of the parts to run (e.g. GPU_PARTS=pytest,bench-castle to re-run two)
#   PYTHON          the interpreter (default python3)
#   CASTLE_CHECKS   extra options of the castle-checks part (e.g. "--dtypes bfloat16 --no-swl")
#   TRAIN_MECHANISMS, TRAIN_OUT  the train part's mechanisms (default standard,castle) and folder (default
#                   RESULTS_DIR/train). The train part refuses (exit 2) a folder that holds an earlier run's results
#                   (it is never given --force), so a re-run needs a new TRAIN_OUT, e.g. GPU_PARTS=train
#                   TRAIN_MECHANISMS=castle TRAIN_OUT=benchmarks/results/gpu-h200/train-castle (a path: RESULTS_DIR
#                   is not expanded there) to measure one mechanism again without touching the first run's records
#   WHEELS          optional folder of wheels of the project's optional extras missing on the machine (the `fla`
#                   extra: flash-linear-attention); they are installed with --no-index --no-deps into
#                   RESULTS_DIR/.site, nothing else is installed
#
# Parts, in order of priority: env (device and ceilings), castle-checks, castle-sweep, castle-speed
# (benchmarks/gpu/castle_kernel.py), train (benchmarks/gpu/train_throughput.py), bench-sparsity, linear-fla
# (benchmarks/gpu/linear_fla.py), pytest (`pytest -m gpu`, the whole GPU tier), flex-density
# (benchmarks/gpu/flex_density.py: the lean form of bench-sparsity), bench-mechanisms, bench-overhead,
# bench-castle, bench-future. Each writes its log to RESULTS_DIR/logs/PART.log (PART.2.log ... on a re-run);
# RESULTS_DIR/summary.md lists every part with its
# exit status, seconds and limit. A part's failure does not stop the others. The run is refused if RESULTS_DIR
# holds a summary already (nothing is overwritten), unless GPU_PARTS names the parts to (re-)run.
set -u
cd "$(dirname "$0")/../.."
R=${1:-benchmarks/results/gpu-cuda}
BUDGET=${2:-480}
PY=${PYTHON:-python3}
ONLY=${GPU_PARTS:-all}
if [ "$ONLY" = all ] && [ -e "$R/summary.md" ]; then
  echo "run_all.sh: $R/summary.md exists; choose another folder or name the parts to re-run in GPU_PARTS" >&2
  exit 2
fi
mkdir -p "$R/logs"
"$PY" -c "import attnlab" 2>/dev/null || export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
if [ -n "${WHEELS:-}" ] && ! "$PY" -c "import fla" 2>/dev/null; then
  SITE="$(cd "$R" && pwd)/.site"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    "$WHEELS"/*.whl && export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
# test_castle_triton.py sets TRITON_INTERPRET=1 (setdefault) when pytest imports it; on a GPU everything must be
# compiled, so the variable is set to 0 for every part.
export TRITON_INTERPRET=0 PYTHONUNBUFFERED=1
START=$(date +%s)
SUMMARY="$R/summary.md"
[ -e "$SUMMARY" ] || printf '| part | exit | seconds | limit |\n|---|---|---|---|\n' > "$SUMMARY"

# part NAME LIMIT CMD...: run CMD with at most min(LIMIT, what is left of the budget) seconds; the word {secs} in
# CMD becomes that limit less 10 s (the scripts' own deadlines, so that they write what they measured in time).
part() {
  local name=$1 limit=$2
  shift 2
  if [ "$ONLY" != all ] && [[ ",$ONLY," != *",$name,"* ]]; then return; fi
  local left=$((BUDGET - ($(date +%s) - START)))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 20 ]; then
    echo "| $name | skipped: budget spent | 0 | $limit |" >> "$SUMMARY"
    echo "== $name: skipped (budget spent)"
    return
  fi
  local args=() a
  for a in "$@"; do args+=("${a//\{secs\}/$((limit - 10))}"); done
  echo "== $name (limit ${limit}s): ${args[*]}"
  local t0 rc log="$R/logs/$name.log" n=2
  while [ -e "$log" ]; do log="$R/logs/$name.$n.log"; n=$((n + 1)); done  # a re-run keeps the earlier log
  t0=$(date +%s)
  timeout -k 5 "$limit" "${args[@]}" > "$log" 2>&1
  rc=$?
  echo "| $name | $rc$([ $rc = 124 ] && echo ' (time limit)') | $(($(date +%s) - t0)) | $limit |" >> "$SUMMARY"
  tail -n 4 "$log"
}

BENCH=(-m attnlab.cli bench --device cuda --dtype bfloat16 --warmup 2 --repeats 5 --min-time 0.1 --budget 2
       --no-progress --force --out "$R/bench")

part env 25 bash -c "nvidia-smi; $PY benchmarks/gpu/ceilings.py --out '$R'"
part castle-checks 55 "$PY" benchmarks/gpu/castle_kernel.py --phase checks --out "$R/castle" --max-seconds {secs} \
  ${CASTLE_CHECKS:-}
part castle-sweep 50 "$PY" benchmarks/gpu/castle_kernel.py --phase sweep --out "$R/castle" --max-seconds {secs}
part castle-speed 50 "$PY" benchmarks/gpu/castle_kernel.py --phase speed --out "$R/castle" --max-seconds {secs}
part train 150 "$PY" benchmarks/gpu/train_throughput.py --out "${TRAIN_OUT:-$R/train}" --budget-seconds {secs} \
  --hard-limit-seconds {secs} --mechanisms "${TRAIN_MECHANISMS:-standard,castle}"
part bench-sparsity 70 "$PY" "${BENCH[@]}" sparsity --lengths 8192
part linear-fla 60 "$PY" benchmarks/gpu/linear_fla.py --out "$R/linear" --max-seconds {secs}
# each failure is written to pytest-failures.log as it happens (tests/conftest.py), so a time limit keeps them
part pytest 150 env ATTNLAB_FAILURE_LOG="$R/pytest-failures.log" "$PY" -m pytest -m gpu -n 8 -p no:cacheprovider \
  -q -rfEs --continue-on-collection-errors --junitxml "$R/pytest-gpu.xml"
part flex-density 60 "$PY" benchmarks/gpu/flex_density.py --out "$R/flex" --max-seconds {secs}
part bench-mechanisms 45 "$PY" "${BENCH[@]}" mechanisms --lengths 1024,4096
part bench-overhead 25 "$PY" "${BENCH[@]}" overhead --lengths 4096
part bench-castle 45 "$PY" "${BENCH[@]}" castle --lengths 2048,8192
part bench-future 45 "$PY" "${BENCH[@]}" future --lengths 2048,8192

[ -e "$R/castle/castle-kernel.jsonl" ] && "$PY" benchmarks/gpu/castle_kernel.py --render --out "$R/castle" \
  > /dev/null 2>&1
echo "total $(($(date +%s) - START)) s of a ${BUDGET} s budget" | tee -a "$R/logs/total.txt"
cat "$SUMMARY"
