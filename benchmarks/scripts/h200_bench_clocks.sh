#!/usr/bin/env bash
# Call 92 (twenty-first session; kind nvidia-h200, one GPU alone; the session's last ~6 device minutes). NOTES 119.
# Calls 88-89's machine ran the seed bench's fp8 step 5% slower than call 85's (same code) at a median SM clock of
# 1,860 MHz under fp8 and 1,695 under bf16. The same untuned bench on another machine with the GPU logged, to see
# whether a machine with a normal fp8 step runs it at a higher clock; then the fp8 step profiled, if time is left.
set -u
T0=$(date +%s)
source benchmarks/device_env.sh > $OUT/env.txt 2>&1 || exit 1
R=/tmp/results_bench_clocks; rm -rf $R; mkdir -p $R; cp $OUT/env.txt $R/
PACK=bench_clocks.tar.gz
source benchmarks/scripts/lib_single.sh  # pack, left, bench, profile, gpu_log_start
left() { echo $(( 270 - $(date +%s) + T0 )); }  # this call's limit is 280 s, not 600
gpu_log_start
echo "$(date -u +%H:%M:%S.%N) start bench-seed" >> $R/phases.txt
bench bench-seed 150 170 --preset seed --steps 30 --timeout 120 --no_layers --modes bf16-compile,fp8-delayed-compile
echo "$(date -u +%H:%M:%S.%N) end bench-seed" >> $R/phases.txt
(( $(left) >= 60 )) && profile profile-seed-fp8 $(left) --precision fp8-delayed
kill $SMI; pack
echo "total $(( $(date +%s) - T0 )) s"
