#!/usr/bin/env bash
# Device call (kind nvidia-h200-x2), two independent single-GPU jobs side by side, one per GPU:
#  GPU 1: where our seed step loses to the yardstick (issue 3): verify_fp8_compilation.py, the yardstick's
#         bf16/fp8 compile modes, benchmarks/step_overhead.py variants, per-kernel profiles (issue 5).
#  GPU 0: half a of the 1B default matrix with the yardstick (issue 4).
# Every ratio is taken within one GPU's job. Results tarred into $OUT/study_1b_a.tar.gz.
set -u
source benchmarks/device_env.sh > $OUT/env.txt 2>&1 || exit 1
R=/tmp/results; mkdir -p $R/study; cp $OUT/env.txt $R/
(
  export CUDA_VISIBLE_DEVICES=1; S=$R/study
  timeout 150 python3 verify_fp8_compilation.py > $S/verify_fp8_compilation.txt 2>&1; echo "verify rc=$?"
  timeout 150 python3 ../shared/reference/anchor_bench.py --modes bf16-compile,fp8-compile --out $S/reference.jsonl > $S/reference.log 2>&1
  echo "reference rc=$?"
  for prec in bf16 fp8-tensorwise; do for v in bare trainer trainer-noclip trainer-nodata; do
    timeout 120 python3 benchmarks/step_overhead.py --precision $prec --variant $v --steps 12 >> $S/variants.jsonl 2>> $S/variants.err
  done; done
  timeout 120 python3 benchmarks/step_overhead.py --precision fp8-tensorwise --variant trainer --fused_attention cudnn --steps 12 >> $S/variants.jsonl 2>> $S/variants.err
  cat $S/variants.jsonl
  for prec in bf16 fp8-tensorwise; do
    timeout 120 python3 benchmarks/profile_step.py --precision $prec --out $S/profile-$prec > $S/profile-$prec.log 2>&1
    echo "profile $prec rc=$?"; gzip -f $S/profile-$prec/trace.json
  done
) > $R/study.log 2>&1 &
(
  export CUDA_VISIBLE_DEVICES=0
  timeout 540 python3 optimize_performance.py --preset 1b --steps 8 --timeout 200 --compare-reference --no_layers \
    --modes bf16-eager,bf16-compile,fp8-tensorwise-compile,fp8-rowwise-compile,fp8-tensorwise-eager --out $R/1b-a 2>&1 \
    | grep -v "config/s\]" > $R/1b-a.log
) &
wait
cat $R/study.log; tail -15 $R/1b-a.log
tar czf $OUT/study_1b_a.tar.gz -C $R .
