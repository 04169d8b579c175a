#!/usr/bin/env bash
# The stage-2 benchmark on the dense-CLIP-like oracle, both synthetic layouts (scene=synthetic, synthetic_desk):
#   - plain distillation, the full Laser (model=laser) and its stabilised variant (model=laser_stable), 3 stage-2
#     seeds each (one stage 1 per layout, shared through the stage store);
#   - every other ablation row, 3D-OVS and LERF, one seed each, 3D-OVS and LERF at step counts that give them about
#     the full Laser's stage-2 wall-clock time on this CPU (experiments/RESULTS.md);
#   - the ablation rows of the stabilised variant on the default layout, one seed each (which part costs what once
#     the cross phase no longer collapses);
#   - then eval.py on the whole folder: results.*, seeds.* (mean and spread over seeds) and miou_by_scene.*.
#
#   experiments/benchmark_stage2.sh [OUT [override ...]]     # OUT: multirun/benchmark_stage2 by default
#
# JOBS=2 runs two lanes of sweeps side by side, one torch thread each (more jobs done per hour on 2 cores); the
# default JOBS=1 runs them one after the other. PYTHON picks the interpreter (default: python).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-multirun/benchmark_stage2}
shift $(( $# > 0 ? 1 : 0 ))
py=${PYTHON:-python}
jobs=${JOBS:-1}
export HF_HUB_OFFLINE=1 WANDB_MODE=offline
scenes=scene=synthetic,synthetic_desk
seeds=model.seed=20230417,20230418,20230419
sweep() { "$py" train.py -m "$scenes" logger=none "hydra.sweep.dir=$out/$1" "${@:2}"; }

lane_a() {
  sweep laser model=laser,laser_stable "$seeds" "$@"
  sweep ovs3d model=ovs3d model.schedule.n_iters=400 model.schedule.joint_start_iter=200 "$@"
  sweep lerf model=lerf model.schedule.n_iters=500 "$@"
}
lane_b() {
  sweep plain +ablation=plain "$seeds" "$@"
  sweep ablations +ablation=no_adapter,no_self_cross,no_ltqa,no_label_volume,no_text_augmentation "$@"
  "$py" train.py -m scene=synthetic logger=none "hydra.sweep.dir=$out/stable_ablations" model=laser_stable \
    +ablation=no_self_cross,no_ltqa,no_label_volume,no_text_augmentation "$@"
}

if [ "$jobs" -ge 2 ]; then
  mkdir -p "$out"
  OMP_NUM_THREADS=1 lane_a "$@" > "$out/lane_a.log" 2>&1 &
  a=$!
  OMP_NUM_THREADS=1 lane_b "$@" > "$out/lane_b.log" 2>&1 &
  b=$!
  wait $a && wait $b
else
  lane_a "$@"
  lane_b "$@"
fi
"$py" eval.py "run=$out" render=false
