#!/usr/bin/env bash
# PREPARED IN THE SEVENTH SESSION, NOT YET RUN (kind nvidia-h200, one GPU alone); trimmed in the ninth, when call
# 34 ran the small pair (fp8 1.269x bf16, with CUDA graphs and the fused SwiGLU). What is left: the 1B training
# pair with today's defaults (fp8: CUDA graphs, fused SwiGLU; the bench says 1.332x, call 35), 40 steps: speed,
# peak memory with the graph pools, and the final checkpoint (call 25's 1B runs were killed writing it).
# Then: python -m cs336_basics.perf.measured <the calls in swiglu_kernel_h200/command.txt> <this call's folder>.
set -u
source benchmarks/device_env.sh > $OUT/env.txt 2>&1 || exit 1
R=/tmp/results_sizes; rm -rf $R; mkdir -p $R; cp $OUT/env.txt $R/
T0=$(date +%s); PACK=cudagraph_sizes.tar.gz
FLAGS="--train_data ../shared/data/gutenberg/train.txt --val_data ../shared/data/gutenberg/val.txt --warmup_steps 20 --eval_interval 50 --eval_steps 10 --log_interval 10 --checkpoint_interval 1000 --sample_tokens 0 --seed 0 --compile_model --use_flash_attn --no_gradient_checkpointing"
source benchmarks/scripts/lib_single.sh
gpu_log_start
B1="--preset 1b --batch_size 8 --max_steps 40 --eval_interval 20"
run 1b-bf16 220 $B1
run 1b-fp8 220 $B1 --use_fp8
kill $SMI; pack
echo "total $(( $(date +%s) - T0 )) s"
