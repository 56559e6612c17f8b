#!/usr/bin/env bash
# LeaF's p / lambda sensitivity (spec causal_training.md, acceptance figure 6) with seeds 0, 1, 2, after a one-seed
# sweep (LEAF_SEEDS=0 bash benchmarks/leaf_sensitivity.sh OUT): each setting's seed-0 run is copied into
# OUT/arith-leaf-<setting>-3seeds (same settings, so the comparison keeps it) and seeds 1 and 2 are trained there.
# Finished comparisons are skipped; an interrupted one resumes (about 14 minutes per LeaF run on one core).
#
#   bash benchmarks/leaf_sensitivity_seeds.sh OUT
set -euo pipefail
out=${1:?usage: leaf_sensitivity_seeds.sh OUT}
attnlab=${ATTNLAB:-attnlab}
for setting in "p0.05-lam1:0.05:1.0" "p0.10-lam0.5:0.10:0.5" "p0.10-lam2:0.10:2.0"; do
  IFS=: read -r name p lam <<< "$setting"
  one=$out/arith-leaf-$name
  dir=$out/arith-leaf-$name-3seeds
  [ -f "$dir/report.html" ] && continue
  if [ ! -d "$dir/runs/leaf/seed0" ] && [ -f "$one/runs/leaf/seed0/result.json" ]; then
    mkdir -p "$dir/runs/leaf"
    cp -r "$one/runs/leaf/seed0" "$dir/runs/leaf/seed0"
  fi
  $attnlab compare --preset arith-distractors --variants leaf --seeds 0,1,2 \
    --set options.teacher.checkpoint="$out/arith-teacher" --set "options.student.checkpoint=$out/arith/runs/plain/seed{seed}" \
    --set options.leaf.p=$p --set options.leaf.lam=$lam --set tensorboard=false --set progress=false \
    --out "$dir" --resume
done
