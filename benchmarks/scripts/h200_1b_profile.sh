#!/usr/bin/env bash
# PREPARED IN THE FOURTEENTH SESSION, NOT YET RUN (kind nvidia-h200, one GPU alone; ~6.5 min). NOTES 71.
# First verify_fp8_compilation.py (its delayed-layer check now runs the forward product with fast accumulation,
# as training does by default: its first GPU run). Then:
# Where a 1B step goes with today's defaults (never profiled with our cast kernels, the weight cache or fast
# accumulation; call 49 was the last 1B profile): benchmarks/profile_step.py at micro-batch 8 x 2048, fp8 (the
# delayed recipe's defaults) and bf16, 3 profiled steps each after warm-up; breakdown.json lists every kernel.
set -u
source benchmarks/device_env.sh > $OUT/env.txt 2>&1 || exit 1
R=/tmp/results_1b_profile; rm -rf $R; mkdir -p $R; cp $OUT/env.txt $R/
T0=$(date +%s); PACK=1b_profile.tar.gz
source benchmarks/scripts/lib_single.sh
echo "python3 verify_fp8_compilation.py" > $R/verify.command
timeout 150 python3 verify_fp8_compilation.py > $R/verify.log 2>&1
echo "verify rc=$? at $(( $(date +%s) - T0 )) s:"; grep -a "PASS\|FAIL\|SKIP\|passed" $R/verify.log | cut -c1-160; pack
for precision in fp8-delayed bf16; do
  name=profile-1b-$precision
  left=$(( 440 - $(date +%s) + T0 ))
  (( left > 60 )) || { echo "$name SKIPPED ($left s left)"; continue; }
  echo "python3 benchmarks/profile_step.py --preset 1b --batch_size 8 --precision $precision --out \$OUT/$name" > $R/$name.command
  timeout $left python3 benchmarks/profile_step.py --preset 1b --batch_size 8 --precision $precision --out $R/$name > $R/$name.log 2>&1
  echo "$name rc=$? at $(( $(date +%s) - T0 )) s: $(grep -a -A12 'per step:' $R/$name.log)"
  rm -f $R/$name/trace.json; pack
done
echo "total $(( $(date +%s) - T0 )) s"
