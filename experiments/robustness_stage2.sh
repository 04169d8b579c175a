#!/usr/bin/env bash
# Does the Laser vs plain-distillation ranking hold when the oracle changes? Each oracle parameter at 0.5x and 2x
# its default (conf/teacher/base/oracle.yaml; a probability is capped at 1), one parameter at a time, on the default
# synthetic scene, one stage-2 seed: LASER (default model=laser_stable, the best Laser configuration of
# experiments/benchmark_stage2.sh) with +ablation=full against +ablation=plain. Then eval.py on the whole folder.
#
#   experiments/robustness_stage2.sh [OUT [parameter ...]]   # OUT: multirun/robustness_stage2; all parameters
#
# Parameters run in the order below (the noise model's first), so an interrupted run has the important ones.
# JOBS=2 runs two parameters side by side, one torch thread each. PYTHON picks the interpreter (default: python).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-multirun/robustness_stage2}
shift $(( $# > 0 ? 1 : 0 ))
py=${PYTHON:-python}
jobs=${JOBS:-1}
laser=${LASER:-laser_stable}
export HF_HUB_OFFLINE=1 WANDB_MODE=offline
declare -A values=(
  [blotch_std]=0.085,0.34 [global_norm]=2.0,8.0 [token_noise]=0.15,0.6 [context_weight]=0.15,0.6
  [global_jitter]=0.25,1.0 [artifact_share]=0.01,0.04 [artifact_norm]=5.0,20.0 [blotch_scale]=12.0,48.0
  [object_share]=0.075,0.3 [view_share]=0.025,0.1 [blur_sigma]=0.25,1.0 [token_norm]=5.0,20.0
  [object_view_prob]=0.4,1.0 [region_size]=32,128
)
order=(blotch_std global_norm token_noise context_weight global_jitter artifact_share artifact_norm blotch_scale
       object_share view_share blur_sigma token_norm object_view_prob region_size)
[ $# -gt 0 ] && order=("$@")

one() {
  "$py" train.py -m scene=synthetic logger=none "model=$laser" +ablation=full,plain "teacher.$1=${values[$1]}" \
    "hydra.sweep.dir=$out/$1"
}

if [ "$jobs" -ge 2 ]; then
  mkdir -p "$out"
  for ((i = 0; i < ${#order[@]}; i += 2)); do
    OMP_NUM_THREADS=1 one "${order[i]}" > "$out/${order[i]}.log" 2>&1 &
    a=$!
    if [ $((i + 1)) -lt ${#order[@]} ]; then
      OMP_NUM_THREADS=1 one "${order[i + 1]}" > "$out/${order[i + 1]}.log" 2>&1
    fi
    wait $a
  done
else
  for parameter in "${order[@]}"; do one "$parameter"; done
fi
"$py" eval.py "run=$out" render=false
