#!/usr/bin/env bash
# Device call for issue 6 (kind nvidia-h200-x2): one GPU vs two through FSDP2, the seed and 1B models,
# bf16 and fp8, then a checkpoint written on 2 GPUs resumed on 1. Results tarred into $OUT.
# Ran in call 6 (benchmarks/results/multi_gpu/); its tar then held the checkpoints and was too large to
# come back, so checkpoints are now deleted before the tar, and runs are 40 steps (60 did not fit 10 minutes).
set -u
source benchmarks/device_env.sh > $OUT/env.txt 2>&1 || exit 1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1  # keep NVLink multicast off
R=/tmp/results_multi; rm -rf $R; mkdir -p $R; cp $OUT/env.txt $R/
DATA="--train_data ../shared/data/gutenberg/train.txt --val_data ../shared/data/gutenberg/val.txt"
FAST="--compile_model --use_flash_attn --no_gradient_checkpointing"
for cfg in "seed:--preset seed --batch_size 16" "1b:--preset 1b --batch_size 8"; do
  name=${cfg%%:*}; flags=${cfg#*:}
  for prec in bf16 fp8; do
    p=""; [ $prec = fp8 ] && p="--use_fp8"
    for n in 1 2; do
      out=$R/$name-$prec-${n}gpu
      cmd="torchrun --standalone --nproc_per_node $n train_h100.py $DATA $flags $p $FAST --max_steps 40 --eval_interval 40 --eval_steps 4 --checkpoint_interval 40 --sample_tokens 0 --out_dir $out"
      echo "$cmd" > $out.command; $cmd > $out.log 2>&1; echo "$name $prec ${n}gpu rc=$? $(grep -a 'trained' $out.log)"
    done
  done
done
torchrun --standalone --nproc_per_node 1 train_h100.py --resume $R/seed-bf16-2gpu --max_steps 50 --sample_tokens 0 > $R/resume-2to1.log 2>&1
echo "resume 2 -> 1 rc=$? $(grep -a 'resumed\|trained' $R/resume-2to1.log)"
rm -rf $R/*/checkpoints  # GBs each; the logs, metrics and summary.json files are the evidence
tar czf $OUT/multi_gpu.tar.gz -C $R .
