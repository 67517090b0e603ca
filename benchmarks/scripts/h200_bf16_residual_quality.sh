#!/usr/bin/env bash
# Branch bf16-residual, after call 45 (the speed: seed fp8 1.218x -> 1.263x of fp32-residual bf16). Quality in the
# session's last ~5 device minutes: the small configuration, 200 steps on gutenberg, fp8 default with the float32
# residual stream and with --residual_dtype bf16 (same seed, data, steps): final validation losses.
set -u
source benchmarks/device_env.sh > $OUT/env.txt 2>&1 || exit 1
R=/tmp/results_bf16res_q; rm -rf $R; mkdir -p $R; cp $OUT/env.txt $R/
T0=$(date +%s); PACK=bf16_residual_quality.tar.gz
FLAGS="--train_data ../shared/data/gutenberg/train.txt --val_data ../shared/data/gutenberg/val.txt --checkpoint_interval 1000 --sample_tokens 0 --seed 0"
source benchmarks/scripts/lib_single.sh
SMALL="--preset small --vocab_size 50304 --context_length 1024 --max_steps 200 --warmup_steps 20 --eval_interval 100 --eval_steps 10 --log_interval 10 --compile_model --use_flash_attn --no_gradient_checkpointing --use_fp8"
run small-fp8 110 $SMALL
run small-fp8-bf16res $(( 230 - $(date +%s) + T0 )) $SMALL --residual_dtype bf16
pack
echo "total $(( $(date +%s) - T0 )) s"
