#!/usr/bin/env bash
# Device call: the seed model trained on ../shared/data/gutenberg (issue 2: bf16 eager, gradient
# checkpointing off and on, beside the reference's bf16-eager; issue 3: bf16 vs fp8 loss parity, compiled).
# Usage on the device: bash benchmarks/scripts/training_runs.sh STEPS   (results tarred into $OUT)
set -u
source benchmarks/device_env.sh > $OUT/env.txt 2>&1 || exit 1
STEPS=${1:-200}
R=/tmp/results; mkdir -p $R; cp $OUT/env.txt $R/
DATA="--train_data ../shared/data/gutenberg/train.txt --val_data ../shared/data/gutenberg/val.txt"
COMMON="--max_steps $STEPS --warmup_steps 20 --eval_interval 50 --eval_steps 10 --checkpoint_interval $STEPS --log_interval 10 --sample_tokens 40 --seed 0"
run() {  # name, flags...
  local name=$1; shift
  echo "python3 train_h100.py $DATA $COMMON --out_dir $R/$name $*" > $R/$name.command
  python3 train_h100.py $DATA $COMMON --out_dir $R/$name "$@" > $R/$name.log 2>&1
  echo "$name: rc=$? $(tail -3 $R/$name.log | head -1)"
  rm -rf $R/$name/checkpoints  # GBs each; the device keeps nothing anyway
}
run seed-bf16-eager-noac --no_gradient_checkpointing --use_flash_attn
run seed-bf16-eager-ac --use_flash_attn
python3 ../shared/reference/anchor_bench.py --modes bf16-eager --out $R/anchor_bf16_eager.jsonl 2>&1 | tail -1
run seed-bf16-compile --compile_model --use_flash_attn --no_gradient_checkpointing
run seed-fp8-compile --use_fp8 --compile_model --use_flash_attn --no_gradient_checkpointing
tar czf $OUT/training_runs.tar.gz -C $R .
