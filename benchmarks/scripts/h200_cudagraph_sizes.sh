#!/usr/bin/env bash
# PREPARED IN THE SEVENTH SESSION, NOT YET RUN (kind nvidia-h200, one GPU alone). CUDA graphs are the fp8 default
# (--compile_mode auto) since call 26, measured in training only at the seed size (1.138x, 1.145x, 1.159x). Fill in
# the other sizes fp8_gains.json quotes:
#  1. small (dim 384, 6 layers, the seed's tokenizer and context, as in call 19): fp8 was 0.76x bf16 without graphs;
#  2. 1B, 40 steps: speed (the bench says graphs are neutral there, call 27), peak memory with the graph pools,
#     and the final checkpoint (call 25's 1B runs were killed writing it: give them time).
# Then: python -m cs336_basics.perf.measured <the calls in cudagraphs_h200/command.txt> <this call's folder>.
set -u
source benchmarks/device_env.sh > $OUT/env.txt 2>&1 || exit 1
R=/tmp/results_sizes; rm -rf $R; mkdir -p $R; cp $OUT/env.txt $R/
T0=$(date +%s); PACK=cudagraph_sizes.tar.gz
FLAGS="--train_data ../shared/data/gutenberg/train.txt --val_data ../shared/data/gutenberg/val.txt --warmup_steps 20 --eval_interval 50 --eval_steps 10 --log_interval 10 --checkpoint_interval 1000 --sample_tokens 0 --seed 0 --compile_model --use_flash_attn --no_gradient_checkpointing"
source benchmarks/scripts/lib_single.sh
gpu_log_start
SMALL="--preset small --vocab_size 50304 --context_length 1024 --max_steps 200"
run small-bf16 70 $SMALL
run small-fp8 80 $SMALL --use_fp8
B1="--preset 1b --batch_size 8 --max_steps 40 --eval_interval 20"
run 1b-bf16 200 $B1
run 1b-fp8 200 $B1 --use_fp8
kill $SMI; pack
echo "total $(( $(date +%s) - T0 )) s"
