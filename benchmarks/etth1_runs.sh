#!/usr/bin/env bash
# The ETTh1 runs of issue 13 (spec time_series.md acceptance figures 1-3), each an `attnlab compare` that resumes:
# the table at horizons 96, 192, 336 and 720 (DLinear, causal Transformer, AutoHFormer x 3 seeds; about 2 core-hours
# per horizon), then AutoHFormer's ablations at horizon 96 (3 seeds each, about 50 core-minutes each):
# no decay (gamma = 0), additive decay, no window (window >= 2 (L + T) = 864), segments of 1 and 96 steps (the
# preset's is 24), free-running training and scheduled sampling instead of teacher forcing, and the
# block-transformer segment initialiser instead of the linear one.
#
# After each comparison the finished runs are copied into benchmarks/results/etth1/records (run directories do not
# outlive a session; the records do, once committed), and `python benchmarks/etth1_table.py` makes the tables.
#
# The same table with every model wrapped in instance normalisation of the look-back (instance_norm=true) follows.
#
# A comparison whose 3 seeds per model are all in the records is skipped. HORIZONS, NORM_HORIZONS and ABLATIONS
# (space-separated; empty: none) choose a part, e.g.
#   HORIZONS= NORM_HORIZONS=96 ABLATIONS="no-decay free-running" bash benchmarks/etth1_runs.sh runs
#
#   bash benchmarks/etth1_runs.sh OUT          (e.g. runs; results are then summarised in benchmarks/results/etth1)
set -euo pipefail
out=${1:?usage: etth1_runs.sh OUT}
attnlab=${ATTNLAB:-attnlab}
python=${PYTHON:-python}
here=$(dirname "$0")
records=$here/results/etth1/records
kept() {  # records of comparison $1 for the models $2..
  local c=$1 n=0 m; shift
  for m in "$@"; do n=$((n + $(ls "$records/$c-$m"-seed*.json 2>/dev/null | wc -l))); done
  echo $n
}
for T in ${HORIZONS-96 192 336 720}; do
  [ "$(kept "etth1-h$T" dlinear transformer autohformer)" -ge 9 ] && continue
  $attnlab compare --preset etth1-models --set data.horizon=$T --set progress=false --out "$out/etth1-h$T" --resume
  $python "$here/etth1_table.py" --collect "$out"
done
for T in ${NORM_HORIZONS-96 192 336 720}; do  # every model with instance normalisation of the look-back
  [ "$(kept "etth1-h$T-instance-norm" dlinear transformer autohformer)" -ge 9 ] && continue
  $attnlab compare --preset etth1-models --set data.horizon=$T --set model.dlinear.instance_norm=true \
    --set model.transformer.instance_norm=true --set model.autohformer.instance_norm=true --set progress=false \
    --out "$out/etth1-h$T-instance-norm" --resume
  $python "$here/etth1_table.py" --collect "$out"
done
for ablation in "no-decay:model.autohformer.decay=none" "additive-decay:model.autohformer.decay=additive" \
                "no-window:model.autohformer.window=864" "segment1:model.autohformer.segment_len=1" \
                "segment96:model.autohformer.segment_len=96" "free-running:model.autohformer.train_mode=free_running" \
                "scheduled:model.autohformer.train_mode=scheduled" \
                "block-init:model.autohformer.segment_init=block_transformer"; do
  IFS=: read -r name setting <<< "$ablation"
  case " ${ABLATIONS-no-decay additive-decay no-window segment1 segment96 free-running scheduled block-init} " in
    *" $name "*) ;;
    *) continue ;;
  esac
  [ "$(kept "etth1-h96-$name" autohformer)" -ge 3 ] && continue
  $attnlab compare --preset etth1-models --variants autohformer --set data.horizon=96 --set "$setting" \
    --set progress=false --out "$out/etth1-h96-$name" --resume
  $python "$here/etth1_table.py" --collect "$out"
done
