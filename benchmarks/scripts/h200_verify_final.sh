#!/usr/bin/env bash
# Call 86 (twentieth session; kind nvidia-h200, one GPU alone; 179 s). NOTES 110.
# verify_fp8_compilation.py at today's code: its last GPU run (call 76) predates the cast_buffers refactor and
# TrainConfig.asked. Limit 330 s, so its closing timing (past 150 s in call 76) can finish too.
set -u
T0=$(date +%s)
source benchmarks/device_env.sh > $OUT/env.txt 2>&1 || exit 1
R=/tmp/results_verify_final; rm -rf $R; mkdir -p $R; cp $OUT/env.txt $R/
PACK=verify_final.tar.gz
source benchmarks/scripts/lib_single.sh  # pack
echo "python3 verify_fp8_compilation.py" > $R/verify.command
timeout 330 python3 verify_fp8_compilation.py > $R/verify.log 2>&1
echo "verify rc=$? at $(( $(date +%s) - T0 )) s"; tr '\r' '\n' < $R/verify.log | grep -a -v Warning | tail -40 | cut -c1-220; pack
