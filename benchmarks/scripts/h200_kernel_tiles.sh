#!/usr/bin/env bash
# PREPARED IN THE SIXTEENTH SESSION, NEVER RUN AS A WHOLE: calls 74-78 ran its parts and more (NOTES 96, 98). NOTES 90.
# Needs benchmarks/kernel_variants.py (--variants), removed after NOTES 98: check out db7c10c to run it again.
# Call 63's 1B profile: swiglu_backward_fp8_kernel 343 us a layer for ~922 MB (2.7 TB/s, ~56% of the H200's
# bandwidth; inductor's bf16 SwiGLU backward moves its bytes at ~4.2 TB/s); forward 158 us (~73%). Every tile of
# CONFIGS and larger ones (full 128-byte fp8 lines in both layouts need BLOCK_M and BLOCK_N >= 128), checked
# against the references and timed, at the seed and 1B shapes, with the --fp8_merge_w13 layout too, and
# benchmarks/kernel_variants.py's persistent, pipelined backward (--variants).
# The budget counts the set-up too (NOTES 94, mended in the seventeenth session).
set -u
T0=$(date +%s)
source benchmarks/device_env.sh > $OUT/env.txt 2>&1 || exit 1
R=/tmp/results_kernel_tiles; rm -rf $R; mkdir -p $R; cp $OUT/env.txt $R/
PACK=kernel_tiles.tar.gz
source benchmarks/scripts/lib_single.sh  # pack
EXTRA=128x256w8,256x128w8,256x64w8,64x256w4,128x128w4,128x64w4,64x128w8,128x256w16
for shape in "seed:--M 16384 --N 3584 --D 896" "1b:--M 16384 --N 5632 --D 2048"; do
  name=tiles-${shape%%:*}; left=$(( 585 - $(date +%s) + T0 ))
  (( left < 60 )) && { echo "$name SKIPPED ($left s left)"; continue; }
  echo "python3 benchmarks/kernel_swiglu_fp8.py ${shape#*:} --extra_configs $EXTRA --variants --out \$OUT/$name.json" > $R/$name.command
  timeout $(( left < 280 ? left : 280 )) python3 benchmarks/kernel_swiglu_fp8.py ${shape#*:} --extra_configs $EXTRA \
    --variants --out $R/$name.json > $R/$name.log 2>&1
  echo "$name rc=$? at $(( $(date +%s) - T0 )) s:"; grep -a "FAIL" $R/$name.log | head -5
  grep -a "triton\|inductor\|chose" $R/$name.log | sort -k2 | head -60; pack
done
echo "total $(( $(date +%s) - T0 )) s"
