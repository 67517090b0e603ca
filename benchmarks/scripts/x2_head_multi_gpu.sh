#!/usr/bin/env bash
# Device call (kind nvidia-h200-x2): the float8 output head (on by default with --use_fp8) under FSDP2 + compile on
# two GPUs, the real kernels (the CPU suite covers it only emulated, under gloo), and per-GPU scaling against one GPU
# in the same call: 1B fp8 on 2 GPUs, seed fp8 on 2 GPUs, then both on 1 GPU side by side.
set -u
source benchmarks/device_env.sh > $OUT/env.txt 2>&1 || exit 1
R=/tmp/results_headmulti; rm -rf $R; mkdir -p $R; cp $OUT/env.txt $R/
DEADLINE=420
source benchmarks/scripts/lib_multi.sh
prep
phase 110 "1b-fp8-2gpu|0,1|$B1|--use_fp8|24"
phase 90 "seed-fp8-2gpu|0,1|$SD|--use_fp8|30"
phase 90 "1b-fp8-1gpu|0|$B1|--use_fp8|24" "seed-fp8-1gpu|1|$SD|--use_fp8|30"
grep -ah "cross-entropy\|attention kernels" $R/*.log | sort | uniq -c
rm -rf $R/*/checkpoints $R/*/tokenizer.json
echo "total $(( $(date +%s) - T0 )) s"
tar czf $OUT/head_multi.tar.gz -C $R .
