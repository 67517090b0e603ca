#!/usr/bin/env bash
# Device call for issues 3 and 4 (kind nvidia-h200-x4): the 1B preset's default matrix split over four GPUs of
# one host, each part a single-GPU job with its own bf16-compile baseline (compare ratios only within a part).
#  GPU 0 (a): the four modes issue 3 names, with the stock-TorchAO yardstick (the issue-3 bar at 1B).
#  GPU 1 (b): the full verify_fp8_compilation.py, then the rowwise recipes.
#  GPU 2 (c): FlashAttention-2 instead of PyTorch's order, the plain math path, and the per-layer table.
#  GPU 3 (d): gradient checkpointing; then the seed guide's train_h100.py command as written (plus a step
#             limit and gutenberg data) to see the fp8 path, its summary and the attention kernels that ran.
# matrix.json is written after every row, so a cut keeps rows. Results tarred into $OUT/issue3_4.tar.gz.
set -u
source benchmarks/device_env.sh > $OUT/env.txt 2>&1 || exit 1
R=/tmp/results_x4; rm -rf $R; mkdir -p $R; cp $OUT/env.txt $R/
nvidia-smi topo -m > $R/topology.txt 2>&1
part() {  # name, seconds, modes, extra flags
  timeout $2 python3 optimize_performance.py --preset 1b --steps 8 --timeout 150 --modes "$3" $4 --out $R/$1 2>&1 \
    | tr '\r' '\n' | grep -v "config/s\]\|^configurations:" > $R/$1.log
  echo "part $1 rc=${PIPESTATUS[0]}"
}
( export CUDA_VISIBLE_DEVICES=0
  part a 530 bf16-compile,fp8-tensorwise-compile,bf16-eager,fp8-tensorwise-eager "--compare-reference --no_layers"
) > $R/gpu0.log 2>&1 &
( export CUDA_VISIBLE_DEVICES=1
  timeout 170 python3 verify_fp8_compilation.py > $R/verify_fp8_compilation.txt 2>&1; echo "verify rc=$?"
  part b 350 bf16-compile,fp8-rowwise-compile,fp8-rowwise_with_gw_hp-compile "--no_layers"
) > $R/gpu1.log 2>&1 &
( export CUDA_VISIBLE_DEVICES=2
  part c 530 bf16-compile,bf16-compile-flash,fp8-tensorwise-compile-flash,bf16-compile-math ""
) > $R/gpu2.log 2>&1 &
( export CUDA_VISIBLE_DEVICES=3
  part d 300 bf16-compile,bf16-compile-ac,fp8-tensorwise-compile-ac "--no_layers"
  cmd="python3 train_h100.py --dim 896 --n_heads 14 --intermediate_size 3584 --batch_size 16 --gradient_accumulation_steps 8 --use_fp8 --compile_model --use_flash_attn --no_gradient_checkpointing --max_steps 30 --eval_interval 30 --eval_steps 4 --sample_tokens 20 --train_data ../shared/data/gutenberg/train.txt --val_data ../shared/data/gutenberg/val.txt --out_dir $R/seed-guide-run"
  echo "$cmd" > $R/seed-guide-run.command
  timeout 220 $cmd 2>&1 | tr '\r' '\n' | grep -v "it/s\]$" > $R/seed-guide-run.log; echo "seed guide run rc=${PIPESTATUS[0]}"
  rm -rf $R/seed-guide-run/checkpoints
) > $R/gpu3.log 2>&1 &
wait
cat $R/gpu*.log; tail -3 $R/verify_fp8_compilation.txt
for p in a b c d; do grep -A8 "^| configuration" $R/$p.log; done
grep -a "attention kernels\|trained\|WARNING" $R/seed-guide-run.log
tar czf $OUT/issue3_4.tar.gz -C $R .
