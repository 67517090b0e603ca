# Shared by the multi-GPU device scripts (sourced after device_env.sh, with R set): torchrun jobs of
# train_h100.py on gutenberg, run side by side on disjoint GPUs, each phase only if the call has time for it.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1  # keep NVLink multicast off
export OMP_NUM_THREADS=4
T0=$(date +%s); DEADLINE=${DEADLINE:-540}
DATA="--train_data ../shared/data/gutenberg/train.txt --val_data ../shared/data/gutenberg/val.txt"
FAST="--compile_model --use_flash_attn --no_gradient_checkpointing"
prep() {  # tokenize once, before jobs run side by side (they would share the cache's temporary files)
  python3 train_h100.py $DATA --preset seed --n_layers 1 --max_steps 1 --eval_steps 1 --sample_tokens 0 \
    --out_dir /tmp/prep --overwrite > $R/prep.log 2>&1; echo "prep rc=$? $(( $(date +%s) - T0 )) s"
}
job() {  # name, gpus (comma list), model flags, precision flags, steps, [keep]
  local name=$1 gpus=$2 n=$(( $(echo $2 | tr -cd , | wc -c) + 1 )) out=$R/$1
  local cmd="torchrun --standalone --nproc_per_node $n train_h100.py $DATA $3 $4 $FAST --max_steps $5 --eval_interval $5 --eval_steps 4 --checkpoint_interval $5 --sample_tokens 0 --out_dir $out"
  echo "CUDA_VISIBLE_DEVICES=$gpus $cmd" > $out.command
  CUDA_VISIBLE_DEVICES=$gpus timeout 200 $cmd > $out.log 2>&1
  echo "$name rc=$? $(grep -a 'trained' $out.log)"
  [ "${6:-}" = keep ] || rm -rf $out/checkpoints
}
phase() {  # seconds it needs, then jobs as "name|gpus|model|precision|steps|keep" run side by side
  local need=$1; shift; local used=$(( $(date +%s) - T0 ))
  if (( used + need > DEADLINE )); then echo "SKIPPED (at ${used} s, needs ${need} s): $*"; return; fi
  for j in "$@"; do IFS='|' read -r a b c d e f <<< "$j"; job "$a" "$b" "$c" "$d" "$e" "$f" & done; wait
}
B1="--preset 1b --batch_size 8"; SD="--preset seed --batch_size 16"
