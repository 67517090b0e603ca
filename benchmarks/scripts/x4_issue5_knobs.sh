#!/usr/bin/env bash
# Device call (kind nvidia-h200-x4). Issue 5: cheap levers on the seed model, one per GPU, each a two-row matrix
# (bf16+compile, fp8 tensorwise+compile) so every ratio has its own bf16 baseline from the same GPU:
#  GPU 0 stock settings with the yardstick; GPU 1 CUDA graphs (--compile_mode reduce-overhead);
#  GPU 2 TorchInductor coordinate-descent tuning; GPU 3 N-d tiling for the transposed fp8 casts.
# Issue 6: the 1B fp8 1-GPU vs 2-GPU pair again, arranged as the bf16 pair was in x4_multi_gpu.sh (the fp8 pair
# there ran beside two compiling seed jobs), then the seed fp8 run on 4 GPUs that did not fit that call.
set -u
source benchmarks/device_env.sh > $OUT/env.txt 2>&1 || exit 1
R=/tmp/results_knobs; rm -rf $R; mkdir -p $R; cp $OUT/env.txt $R/
source benchmarks/scripts/lib_multi.sh
prep
M="--preset seed --steps 12 --timeout 200 --no_layers --modes bf16-compile,fp8-tensorwise-compile"
knob() {  # gpu, name, flags...
  local gpu=$1 name=$2; shift 2
  CUDA_VISIBLE_DEVICES=$gpu timeout 280 python3 optimize_performance.py $M "$@" --out $R/$name 2>&1 \
    | tr '\r' '\n' | grep -v "config/s\]\|^configurations:" > $R/$name.log
  echo "$name rc=${PIPESTATUS[0]}"; grep -A4 "^| configuration" $R/$name.log
}
knob 0 stock --compare-reference > $R/knob0.txt 2>&1 &
knob 1 cuda_graphs --compile_mode reduce-overhead > $R/knob1.txt 2>&1 &
knob 2 coordinate_descent --inductor coordinate_descent_tuning=True > $R/knob2.txt 2>&1 &
knob 3 nd_tiling --inductor triton.prefer_nd_tiling=True,triton.tile_reductions=True > $R/knob3.txt 2>&1 &
wait; cat $R/knob*.txt
phase 120 "1b-fp8-1gpu|0|$B1|--use_fp8|24" "1b-fp8-2gpu|2,3|$B1|--use_fp8|24"
phase 80 "seed-fp8-4gpu|0,1,2,3|$SD|--use_fp8|30"
phase 80 "seed-fp8-1gpu|0|$SD|--use_fp8|30" "seed-fp8-2gpu|2,3|$SD|--use_fp8|30"
rm -rf $R/*/checkpoints $R/*/tokenizer.json
echo "total $(( $(date +%s) - T0 )) s"
tar czf $OUT/issue5_knobs.tar.gz -C $R .
