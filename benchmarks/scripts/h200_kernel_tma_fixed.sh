#!/usr/bin/env bash
# Call 78 of the eighteenth session (kind nvidia-h200, one GPU alone; 104 s). NOTES 98.
# Needs benchmarks/kernel_variants.py (--variants), removed after NOTES 98: check out db7c10c to run it again.
# Call 76: every TMA variant wrote ~25% of its transposed outputs wrong (tl.trans of an fp8 tile: the ptxas bug of
# NOTES 42). Its variants now transpose a bf16 tile (the same bytes after the cast) or load the inputs a second
# time in transposed order; checked and timed (wrong ones timed too, so labelled) at the seed and 1B shapes, with
# our kernels and the compiler's beside them. The ptxas Triton runs is printed.
set -u
T0=$(date +%s)
source benchmarks/device_env.sh > $OUT/env.txt 2>&1 || exit 1
R=/tmp/results_kernel_tma_fixed; rm -rf $R; mkdir -p $R; cp $OUT/env.txt $R/
PACK=kernel_tma_fixed.tar.gz
source benchmarks/scripts/lib_single.sh  # pack
python3 -c "import triton.backends.nvidia as n, os, subprocess; p = os.path.join(os.path.dirname(n.__file__), 'bin', 'ptxas'); print(p, subprocess.run([p, '--version'], capture_output=True, text=True).stdout.strip().splitlines()[-1])" > $R/ptxas.txt 2>&1
cat $R/ptxas.txt
for shape in "seed:--M 16384 --N 3584 --D 896" "1b:--M 16384 --N 5632 --D 2048"; do
  name=tma-${shape%%:*}; left=$(( 585 - $(date +%s) + T0 ))
  (( left < 120 )) && { echo "$name SKIPPED ($left s left)"; continue; }
  echo "python3 benchmarks/kernel_swiglu_fp8.py ${shape#*:} --iters 20 --variants --variant_filter tma --out \$OUT/$name.json" > $R/$name.command
  timeout $(( left < 200 ? left : 200 )) python3 benchmarks/kernel_swiglu_fp8.py ${shape#*:} --iters 20 --variants \
    --variant_filter tma --out $R/$name.json > $R/$name.log 2>&1
  echo "$name rc=$? at $(( $(date +%s) - T0 )) s:"; grep -a "FAIL" $R/$name.log | cut -c1-200 | head -8
  grep -a "ward .* us \|chose" $R/$name.log; pack
done
echo "total $(( $(date +%s) - T0 )) s"
