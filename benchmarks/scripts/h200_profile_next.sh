#!/usr/bin/env bash
# PREPARED IN THE ELEVENTH SESSION ON MAIN, NOT YET RUN (kind nvidia-h200, one GPU alone; ~6-8 min). NOTES 52.
# Profiles (benchmarks/profile_step.py, 3 steps) of today's best setting, with profile_step's new idle-gap
# breakdown (where the GPU waits: 3.0-3.6 ms a step in calls 35 and 43 with CUDA graphs): seed fp8 default, seed
# fp8 with the bf16 residual stream, seed bf16, then 1B fp8 with the bf16 stream. INDUCTOR (e.g.
# "triton.multi_kernel=1", if h200_reduction_levers.sh found it pays) applies to every profile.
set -u
source benchmarks/device_env.sh > $OUT/env.txt 2>&1 || exit 1
R=/tmp/results_profile_next; rm -rf $R; mkdir -p $R; cp $OUT/env.txt $R/
T0=$(date +%s); PACK=profile_next.tar.gz
source benchmarks/scripts/lib_single.sh  # pack, profile (seed by default; --preset 1b overrides it)
I=${INDUCTOR:+--inductor $INDUCTOR}
for spec in "seed-fp8:--precision fp8-delayed" "seed-fp8-bf16res:--precision fp8-delayed --residual_dtype bf16" \
            "seed-bf16:--precision bf16" "1b-fp8-bf16res:--preset 1b --batch_size 8 --precision fp8-delayed --residual_dtype bf16"; do
  name=${spec%%:*}; flags=${spec#*:}
  left=$(( 560 - $(date +%s) + T0 ))
  if (( left > 90 )); then profile profile-$name $(( left < 150 ? left : 150 )) $flags $I
  else echo "profile-$name SKIPPED ($left s left)"; fi
done
echo "total $(( $(date +%s) - T0 )) s"
