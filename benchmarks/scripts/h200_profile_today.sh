#!/usr/bin/env bash
# PREPARED IN THE NINETEENTH SESSION, NOT YET RUN (kind nvidia-h200, one GPU alone; ~3-4 min: call 49 ran four profiles in 158 s). NOTES 106.
# Where one step's time goes with today's defaults (the fp8 weight cache, fast accumulation, w1 | w3 as one float8
# product; bf16 with its weights cast once a step and float32 weight gradients): benchmarks/profile_step.py, 3 steps
# of one micro-batch, at the seed size (16 x 1024) and at 1B (8 x 2048), fp8 and bf16. The newest profiles are
# call 54's (seed fp8) and call 49's, before those defaults. A part starts only if its whole limit is left.
set -u
T0=$(date +%s)
source benchmarks/device_env.sh > $OUT/env.txt 2>&1 || exit 1
R=/tmp/results_profile_today; rm -rf $R; mkdir -p $R; cp $OUT/env.txt $R/
PACK=profile_today.tar.gz
source benchmarks/scripts/lib_single.sh  # profile, pack, left
for spec in "seed-fp8:120:--precision fp8-delayed" "seed-bf16:110:--precision bf16" \
            "1b-fp8:150:--preset 1b --batch_size 8 --precision fp8-delayed" "1b-bf16:140:--preset 1b --batch_size 8 --precision bf16"; do
  IFS=: read -r name secs flags <<< "$spec"
  if (( $(left) >= secs )); then profile profile-$name $secs $flags
  else echo "profile-$name SKIPPED ($(left) s left)"; fi
done
echo "total $(( $(date +%s) - T0 )) s"
