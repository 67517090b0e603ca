#!/usr/bin/env bash
# Call 27 (kind nvidia-h200, one GPU alone): verify_fp8_compilation.py in full (call 26 cut it at 120 s with 9 of 10
# checks passed, in its timing check), and the 1B step with --compile_mode auto, never run at 1B: bf16 (default
# mode), fp8 delayed with CUDA graphs (auto), fp8 delayed without (default); 40 timed steps each.
set -u
source benchmarks/device_env.sh > $OUT/env.txt 2>&1 || exit 1
R=/tmp/results_1bcg; rm -rf $R; mkdir -p $R; cp $OUT/env.txt $R/
T0=$(date +%s)
pack() { tar czf $OUT/1b_cudagraphs.tar.gz -C $R .; }
timeout 230 python3 verify_fp8_compilation.py > $R/verify_fp8_compilation.txt 2>&1
echo "verify rc=$? at $(( $(date +%s) - T0 )) s: $(grep -ac PASS $R/verify_fp8_compilation.txt) PASS lines"; pack
M='{"vocab_size": 50304, "context_length": 2048, "dim": 2048, "n_layers": 16, "n_heads": 16, "intermediate_size": 5632, "rope_theta": 10000.0, "norm_eps": 1e-05, "tie_embeddings": false}'
for spec in "bf16 bf16 auto" "fp8-delayed-cudagraphs fp8-delayed auto" "fp8-delayed fp8-delayed default"; do
  set -- $spec
  left=$(( 560 - $(date +%s) + T0 ))
  (( left > 50 )) || { echo "$1 SKIPPED ($left s left)"; continue; }
  J="{\"name\": \"$1\", \"model\": $M, \"batch_size\": 8, \"steps\": 40, \"precision\": \"$2\", \"compile_mode\": \"$3\"}"
  echo "python3 -m cs336_basics.perf.bench_run '$J'" > $R/$1.command
  timeout $left python3 -m cs336_basics.perf.bench_run "$J" > $R/$1.log 2>&1
  echo "$1 rc=$? at $(( $(date +%s) - T0 )) s: $(grep -a '^RESULT' $R/$1.log | python3 -c 'import json,sys; r=json.loads(sys.stdin.read()[7:]); print(r["compile_mode"], r["step_ms_mean"], r["step_ms_spread"], r["peak_memory_gib"])' 2>&1)"
  pack
done
echo "total $(( $(date +%s) - T0 )) s"
