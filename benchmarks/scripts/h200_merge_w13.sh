#!/usr/bin/env bash
# Call 70 (seventeenth session; kind nvidia-h200, one GPU alone): stopped by the call's 600 s limit after its seed
# bench, its budget not counting the set-up (NOTES 94). NOTES 86-87, 91-92. Since 614ae5d fp8-delayed-compile
# runs w1 | w3 as one product by default (-now13: two products), so run again its fp8 rows would be the same path.
# Two changes built after calls 66-69 (CPU-tested; their kernels in Triton's interpreter):
#  - bf16: the weight gradients written in float32 by cuBLAS (bf16_cache.weight_gradient; call 69: 0.84 ms a seed
#    micro-batch, 2.7 ms at 1B in the products alone). On by default with the bf16 weight cache: every bf16 row
#    here runs it; verify_fp8_compilation.py checks it against float64 on the GPU.
#  - fp8: --fp8_merge_w13 / bench suffix -w13 (experimental): the fused SwiGLU's w1 and w3 as one product each way
#    (call 69: 1.12 ms a seed micro-batch, 1.05 ms at 1B); its kernels are checked at the run's shape before the
#    bench trains (a wrong one is refused).
# 1. verify_fp8_compilation.py (150 s: its checks; the closing timing may be cut);
# 2. seed bench, 30 steps: bf16, fp8 default, fp8 -w13, with stock TorchAO's rows in the same call;
# 3. 1B bench, 15 steps: bf16, fp8, fp8 -w13;
# 4. the seed guide's command, 60 steps, seed 0: fp8 --fp8_merge_w13 (its losses against call 68's 120-step pair
#    are not comparable; a 120-step pair with bf16 is the next call's if the bench says it pays).
set -u
source benchmarks/device_env.sh > $OUT/env.txt 2>&1 || exit 1
R=/tmp/results_merge_w13; rm -rf $R; mkdir -p $R; cp $OUT/env.txt $R/
T0=$(date +%s); PACK=merge_w13.tar.gz
FLAGS="--train_data ../shared/data/gutenberg/train.txt --val_data ../shared/data/gutenberg/val.txt --checkpoint_interval 1000 --sample_tokens 0 --seed 0"
source benchmarks/scripts/lib_single.sh
echo "python3 verify_fp8_compilation.py" > $R/verify.command
timeout 150 python3 verify_fp8_compilation.py > $R/verify.log 2>&1
echo "verify rc=$? at $(( $(date +%s) - T0 )) s:"; grep -a "PASS\|FAIL\|SKIP\|passed" $R/verify.log | cut -c1-200; pack
bench() {  # name, seconds, optimize_performance flags...
  local name=$1 secs=$2; shift 2
  local left=$(( 585 - $(date +%s) + T0 ))
  (( left < 90 )) && { echo "$name SKIPPED ($left s left)"; return; }
  echo "python3 optimize_performance.py $* --out \$OUT/$name" > $R/$name.command
  timeout $(( left < secs ? left : secs )) python3 optimize_performance.py "$@" --out $R/$name 2>&1 \
    | tr '\r' '\n' | grep -v "config/s\]\|^configurations:" > $R/$name.log
  echo "$name at $(( $(date +%s) - T0 )) s:"; grep -a "checked at\|refused\|wrong" $R/$name.log | sort | uniq -c | cut -c1-200
  python3 -c "import json; [print(' ', r.get('name'), r.get('step_ms_mean'), r.get('tokens_per_second'), r.get('fp8_merge_w13'), r.get('error', ''), sep='  ') for r in json.load(open('$R/$name/matrix.json'))['rows']]"
  grep -a -A5 "^| configuration" $R/$name.log | cut -d'|' -f2-3,9-11
  pack
}
bench bench-seed 230 --preset seed --steps 30 --timeout 150 --no_layers --compare-reference \
  --modes bf16-compile,fp8-delayed-compile,fp8-delayed-compile-w13
bench bench-1b 230 --preset 1b --steps 15 --timeout 150 --no_layers --modes bf16-compile,fp8-delayed-compile,fp8-delayed-compile-w13
left=$(( 585 - $(date +%s) + T0 ))
if (( left > 90 )); then
  run guide-fp8-w13-60 $(( left < 110 ? left : 110 )) --dim 896 --n_heads 14 --intermediate_size 3584 --batch_size 16 \
    --gradient_accumulation_steps 8 --compile_model --use_flash_attn --no_gradient_checkpointing --max_steps 60 \
    --warmup_steps 10 --eval_interval 60 --eval_steps 10 --log_interval 10 --use_fp8 --fp8_merge_w13
else echo "guide-fp8-w13-60 SKIPPED ($left s left)"; fi
echo "total $(( $(date +%s) - T0 )) s"
