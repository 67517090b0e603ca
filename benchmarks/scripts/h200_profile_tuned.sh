#!/usr/bin/env bash
# PREPARED IN THE EIGHTH SESSION, NOT YET RUN (kind nvidia-h200, one GPU alone). Issue 5's closing note needs the
# time breakdown of today's default step; the last profile (call 19, delayed_confirm_x2/) predates CUDA graphs and
# --tune_kernels. Kernels inside CUDA graph replays appear in the profiler's trace as launched kernels do.
#  1. profiles, seed, micro-batch 16, 3 steps: fp8 delayed with CUDA graphs (the default), the same tuned, bf16
#     tuned (breakdown.json per run; the Chrome traces stay on the device: too large to bring back);
#  2. the small width's training pair with CUDA graphs (fp8 was 0.76x bf16 without, call 19; NOTES 32).
# Then: python -m cs336_basics.perf.measured <calls in kernel_tuning_h200/command.txt> <this call's folder>.
set -u
source benchmarks/device_env.sh > $OUT/env.txt 2>&1 || exit 1
R=/tmp/results_profile; rm -rf $R; mkdir -p $R; cp $OUT/env.txt $R/
T0=$(date +%s); PACK=profile_tuned.tar.gz
FLAGS="--train_data ../shared/data/gutenberg/train.txt --val_data ../shared/data/gutenberg/val.txt --warmup_steps 20 --eval_interval 50 --eval_steps 10 --log_interval 10 --checkpoint_interval 1000 --sample_tokens 0 --seed 0 --compile_model --use_flash_attn --no_gradient_checkpointing"
source benchmarks/scripts/lib_single.sh
profile() {  # name, seconds, flags...
  local name=$1 secs=$2; shift 2
  echo "python3 benchmarks/profile_step.py --preset seed $* --out \$OUT/$name" > $R/$name.command
  timeout $secs python3 benchmarks/profile_step.py --preset seed "$@" --out $R/$name > $R/$name.log 2>&1
  echo "$name rc=$? at $(( $(date +%s) - T0 )) s: $(grep -a 'per step:' $R/$name.log)"
  rm -f $R/$name/trace.json; pack
}
gpu_log_start
profile profile-fp8 90 --precision fp8-delayed
profile profile-fp8-tuned 170 --precision fp8-delayed --tune_kernels
profile profile-bf16-tuned 150 --precision bf16 --tune_kernels
SMALL="--preset small --vocab_size 50304 --context_length 1024 --max_steps 200"
run small-bf16 70 $SMALL
run small-fp8 80 $SMALL --use_fp8
kill $SMI; pack
echo "total $(( $(date +%s) - T0 )) s"
