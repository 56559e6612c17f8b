#!/usr/bin/env bash
# LeaF on the Spurious Token Game and on arithmetic with distractors (spec causal_training.md B.8, issue 12):
# a larger teacher trained by attnlab on decorrelated data, then plain training (the IID student), KD without
# pruning and LeaF, three seeds each, through `attnlab compare`. Each LeaF seed uses the plain run of the same seed
# as its detection student and starts stage 2 from it (KD too); then the random-span control of LeaF. Steps whose
# output exists are skipped.
#
#   bash benchmarks/leaf_runs.sh OUT [stg|arith ...]      (about 1 hour on one core)
set -euo pipefail
out=${1:?usage: leaf_runs.sh OUT [stg|arith ...]}
shift
tasks=${*:-stg arith}
attnlab=${ATTNLAB:-attnlab}
teacher_size=(--set model.n_layers=4 --set model.d_model=96 --set optim.lr=1e-3)
for task in $tasks; do
  case $task in
    stg) preset=stg; teacher_data=ood ;;
    arith) preset=arith-distractors; teacher_data=clean+ood ;;
    *) echo "unknown task $task (stg or arith)" >&2; exit 2 ;;
  esac
  teacher=$out/$task-teacher
  if [ ! -f "$teacher/result.json" ]; then
    $attnlab train --preset $preset --set data.train_split=$teacher_data "${teacher_size[@]}" \
      --set tensorboard=false --set progress=false --out "$teacher"
  fi
  if [ ! -f "$out/$task/report.html" ]; then
    $attnlab compare --preset $preset --variants plain,kd,leaf --seeds 0,1,2 --baseline plain \
      --set options.teacher.checkpoint="$teacher" --set "options.student.checkpoint=$out/$task/runs/plain/seed{seed}" \
      --set tensorboard=false --out "$out/$task"
  fi
  # the control: as many pruned rows of the same lengths, at random places (leaf.spans=random)
  if [ ! -f "$out/$task-leaf-random/report.html" ]; then
    $attnlab compare --preset $preset --variants leaf --seeds 0,1,2 --set options.leaf.spans=random \
      --set options.teacher.checkpoint="$teacher" --set "options.student.checkpoint=$out/$task/runs/plain/seed{seed}" \
      --set tensorboard=false --out "$out/$task-leaf-random"
  fi
done
