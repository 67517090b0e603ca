#!/usr/bin/env bash
# PREPARED IN THE SEVENTH SESSION, NOT YET RUN (kind nvidia-h200, one GPU alone). CUDA graphs are the fp8 default
# (--compile_mode auto) since call 26, measured in training only at the seed size (1.138x, 1.145x, 1.159x). Fill in
# the 1B size fp8_gains.json quotes (the small width moved to h200_profile_tuned.sh in the eighth session):
# 1B, 60 steps: speed (the bench says graphs are neutral there, call 27), peak memory with the graph pools, and the
# final checkpoint (call 25's 1B runs were killed writing it: give them time).
# Then: python -m cs336_basics.perf.measured <the calls in cudagraphs_h200/command.txt> <this call's folder>.
set -u
source benchmarks/device_env.sh > $OUT/env.txt 2>&1 || exit 1
R=/tmp/results_sizes; rm -rf $R; mkdir -p $R; cp $OUT/env.txt $R/
T0=$(date +%s); PACK=cudagraph_sizes.tar.gz
FLAGS="--train_data ../shared/data/gutenberg/train.txt --val_data ../shared/data/gutenberg/val.txt --warmup_steps 20 --eval_interval 50 --eval_steps 10 --log_interval 10 --checkpoint_interval 1000 --sample_tokens 0 --seed 0 --compile_model --use_flash_attn --no_gradient_checkpointing"
source benchmarks/scripts/lib_single.sh
gpu_log_start
B1="--preset 1b --batch_size 8 --max_steps 60 --eval_interval 30"
run 1b-bf16 240 $B1
run 1b-fp8 240 $B1 --use_fp8
kill $SMI; pack
echo "total $(( $(date +%s) - T0 )) s"
