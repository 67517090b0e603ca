#!/usr/bin/env bash
# Device call (kind nvidia-h200-x2) after attention moved to PyTorch's own fused-kernel order (cuDNN first
# on Hopper) and the matrix children stopped sharing compile caches. Phase 1, one single-GPU job per GPU:
#  GPU 1: verify_fp8_compilation.py; the seed matrix (auto vs FlashAttention-first) with the yardstick.
#  GPU 0: the rest of the 1B default matrix with the yardstick and the per-layer table.
# Phase 2, both GPUs: a profile of the seed step under FSDP2 on 2 GPUs (why the seed scales poorly), and
# the 1B model trained 30 steps on 1 and on 2 GPUs with its summary.json kept (the issue-6 scaling figure).
set -u
source benchmarks/device_env.sh > $OUT/env.txt 2>&1 || exit 1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
R=/tmp/results; mkdir -p $R; cp $OUT/env.txt $R/
nvidia-smi topo -m > $R/topology.txt 2>&1
(
  export CUDA_VISIBLE_DEVICES=1
  timeout 100 python3 verify_fp8_compilation.py > $R/verify_fp8_compilation.txt 2>&1; echo "verify rc=$?"
  timeout 225 python3 optimize_performance.py --preset seed --steps 10 --timeout 100 --no_layers --compare-reference \
    --modes bf16-compile,fp8-tensorwise-compile,bf16-compile-flash,fp8-tensorwise-compile-flash --out $R/seed 2>&1 \
    | grep -v "config/s\]" > $R/seed.log; echo "seed matrix rc=$?"
) > $R/gpu1.log 2>&1 &
(
  export CUDA_VISIBLE_DEVICES=0
  timeout 330 python3 optimize_performance.py --preset 1b --steps 8 --timeout 120 --compare-reference \
    --modes bf16-compile,fp8-tensorwise-compile,fp8-rowwise_with_gw_hp-compile,bf16-compile-ac,fp8-tensorwise-compile-ac \
    --out $R/1b-b 2>&1 | grep -v "config/s\]" > $R/1b-b.log; echo "1b matrix rc=$?"
) > $R/gpu0.log 2>&1 &
wait
cat $R/gpu1.log $R/gpu0.log; tail -12 $R/seed.log; tail -14 $R/1b-b.log
timeout 80 torchrun --standalone --nproc_per_node 2 benchmarks/profile_step.py --preset seed --out $R/profile-seed-2gpu \
  > $R/profile-seed-2gpu.log 2>&1; echo "2-gpu profile rc=$?"; grep -A8 "^per step" $R/profile-seed-2gpu.log
gzip -f $R/profile-seed-2gpu/trace.json
DATA="--train_data ../shared/data/gutenberg/train.txt --val_data ../shared/data/gutenberg/val.txt"
for n in 1 2; do
  o=$R/1b-bf16-${n}gpu
  cmd="torchrun --standalone --nproc_per_node $n train_h100.py $DATA --preset 1b --batch_size 8 --compile_model --use_flash_attn --no_gradient_checkpointing --max_steps 30 --eval_interval 30 --eval_steps 4 --checkpoint_interval 30 --sample_tokens 0 --out_dir $o"
  echo "$cmd" > $o.command; timeout 85 $cmd > $o.log 2>&1; echo "1b ${n}gpu rc=$? $(grep -a 'trained' $o.log)"
  rm -rf $o/checkpoints
done
tar czf $OUT/final.tar.gz -C $R .
