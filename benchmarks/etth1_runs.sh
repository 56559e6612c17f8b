#!/usr/bin/env bash
# The ETTh1 runs of issue 13 (spec time_series.md acceptance figures 1-3), each an `attnlab compare` that resumes:
# the table at horizons 96, 192, 336 and 720 (DLinear, causal Transformer, AutoHFormer x 3 seeds; about 2 core-hours
# per horizon), then AutoHFormer's ablations at horizon 96 (3 seeds each, about 50 core-minutes each):
# no decay (gamma = 0), additive decay, no window (window >= 2 (L + T) = 864), segments of 1 and 96 steps (the
# preset's is 24), and free-running training instead of teacher forcing.
#
#   bash benchmarks/etth1_runs.sh OUT          (e.g. runs; results are then summarised in benchmarks/results/etth1)
set -euo pipefail
out=${1:?usage: etth1_runs.sh OUT}
attnlab=${ATTNLAB:-attnlab}
for T in 96 192 336 720; do
  $attnlab compare --preset etth1-models --set data.horizon=$T --set progress=false --out "$out/etth1-h$T" --resume
done
for ablation in "no-decay:model.autohformer.decay=none" "additive-decay:model.autohformer.decay=additive" \
                "no-window:model.autohformer.window=864" "segment1:model.autohformer.segment_len=1" \
                "segment96:model.autohformer.segment_len=96" "free-running:model.autohformer.train_mode=free_running"; do
  IFS=: read -r name setting <<< "$ablation"
  $attnlab compare --preset etth1-models --variants autohformer --set data.horizon=96 --set "$setting" \
    --set progress=false --out "$out/etth1-h96-$name" --resume
done
