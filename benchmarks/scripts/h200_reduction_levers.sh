#!/usr/bin/env bash
# PREPARED IN THE ELEVENTH SESSION ON MAIN, NOT YET RUN (kind nvidia-h200, one GPU alone; ~9.5 min). NOTES 51.
# At 1B (D = 2,048) inductor compiles RMSNorm and the fp8 casts fused into it as looped reductions ("triton_red_",
# 363, 192 and 104 us a layer in call 43's profile): its persistent-reduction threshold for inner reductions is
# 1,024 elements, so a 2,048-wide row is read twice (once for the sum of squares, again for the output).
# triton.multi_kernel=1 raises that threshold 16-fold and times the persistent against the looped kernel on the
# first call, keeping the faster; =2 forces the persistent one. Bench rows, bf16 and fp8 default, each setting in
# its own matrix (the override applies to every compiled row of a matrix, bf16 too, so the ratio stays fair):
# 1B base, 1B multi_kernel=1, seed base, seed multi_kernel=1 (seed rows are persistent already: a control),
# then 1B multi_kernel=2 while time allows.
set -u
source benchmarks/device_env.sh > $OUT/env.txt 2>&1 || exit 1
R=/tmp/results_levers; rm -rf $R; mkdir -p $R; cp $OUT/env.txt $R/
T0=$(date +%s); PACK=reduction_levers.tar.gz
source benchmarks/scripts/lib_single.sh  # pack
matrix() {  # name, preset, steps, inductor settings ("" for none)
  local left=$(( 575 - $(date +%s) + T0 ))
  (( left > 110 )) || { echo "$1 SKIPPED ($left s left)"; return; }
  echo "python3 optimize_performance.py --preset $2 --steps $3 --timeout 200 --no_layers --modes bf16-compile,fp8-delayed-compile ${4:+--inductor '$4'} --out \$OUT/$1" > $R/$1.command
  timeout $left python3 optimize_performance.py --preset $2 --steps $3 --timeout 200 --no_layers \
    --modes bf16-compile,fp8-delayed-compile ${4:+--inductor "$4"} --out $R/$1 2>&1 | tr '\r' '\n' \
    | grep -v "config/s\]\|^configurations:" > $R/$1.log
  echo "$1 at $(( $(date +%s) - T0 )) s:"; grep -A3 "^| configuration" $R/$1.log | tail -2 | cut -d'|' -f2-5,9,13
  python3 -c "import json; [print(r.get('name'), r.get('step_ms_mean'), r.get('loss'), r.get('error', ''), sep='  ') for r in json.load(open('$R/$1/matrix.json'))['rows']]"
  pack
}
matrix 1b-base 1b 15 ""
matrix 1b-multi_kernel 1b 15 "triton.multi_kernel=1"
matrix seed-base seed 30 ""
matrix seed-multi_kernel seed 30 "triton.multi_kernel=1"
matrix 1b-persistent 1b 15 "triton.multi_kernel=2"
echo "total $(( $(date +%s) - T0 )) s"
