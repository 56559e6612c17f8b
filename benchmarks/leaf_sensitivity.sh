#!/usr/bin/env bash
# Sensitivity of LeaF (p, lambda) on arith-distractors and of CAT (alpha) on the Spurious Token Game (spec
# causal_training.md, acceptance figure 6), three seeds each, after benchmarks/leaf_runs.sh OUT arith (its teacher and
# plain students are reused). One comparison per setting; finished ones are skipped.
#
#   bash benchmarks/leaf_sensitivity.sh OUT      (LEAF_SEEDS=0,1,2 by default: about 2 hours on one core, a LeaF
#                                                  run taking about 14 min; LEAF_SEEDS=0 for a one-seed sweep)
set -euo pipefail
out=${1:?usage: leaf_sensitivity.sh OUT}
attnlab=${ATTNLAB:-attnlab}
leaf_seeds=${LEAF_SEEDS:-0,1,2}
teacher=$out/arith-teacher
students="$out/arith/runs/plain/seed{seed}"
for setting in "p0.05-lam1:0.05:1.0" "p0.10-lam0.5:0.10:0.5" "p0.10-lam2:0.10:2.0"; do
  IFS=: read -r name p lam <<< "$setting"
  dir=$out/arith-leaf-$name
  [ -f "$dir/report.html" ] && continue
  $attnlab compare --preset arith-distractors --variants leaf --seeds "$leaf_seeds" --set options.teacher.checkpoint="$teacher" \
    --set "options.student.checkpoint=$students" --set options.leaf.p=$p --set options.leaf.lam=$lam \
    --set tensorboard=false --out "$dir"
done
for alpha in 1.5 4; do
  dir=$out/stg-cat-alpha$alpha
  [ -f "$dir/report.html" ] && continue
  $attnlab compare --preset stg --variants cat-progress --seeds 0,1,2 --set options.cat.alpha=$alpha \
    --set tensorboard=false --out "$dir"
done
