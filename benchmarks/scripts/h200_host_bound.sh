#!/usr/bin/env bash
# Device call (kind nvidia-h200, one GPU alone), sixth session, third call. Call 23 (h200_alone_b.sh) logged the
# GPU through 150-step seed benches: bf16 held the 700 W power cap at 100% utilisation (clock-event reason
# 0x4, SW power cap) with steady steps; fp8 delayed and tensorwise ran at 520-650 W and 66-100% utilisation,
# their steps 75-110 ms: the GPU waits for the host. Seed-size fp8 is host-bound on this machine.
# Prediction: CUDA graphs (--compile_mode reduce-overhead) remove the launch cost of the compiled blocks, and the
# shared-state layer (branch delayed-shared-state, a8eee55: 24 sink accumulations instead of 120, a few update
# kernels) removes host work outside them; either lifts fp8 delayed from ~1.01-1.05x toward its best steps' 1.15x.
# Every row: the seed configuration, 150 timed steps, each step's time kept, full stderr kept (cudagraph skips).
set -u
source benchmarks/device_env.sh > $OUT/env.txt 2>&1 || exit 1
R=/tmp/results_host; rm -rf $R; mkdir -p $R; cp $OUT/env.txt $R/
T0=$(date +%s)
nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,temperature.gpu,utilization.gpu,clocks_event_reasons.active \
  --format=csv -lms 100 > $R/smi.csv 2> $R/smi.err &
SMI=$!
pack() { tar czf $OUT/host_bound.tar.gz -C $R .; }
export TORCHINDUCTOR_FX_GRAPH_CACHE=0 TORCHINDUCTOR_AUTOGRAD_CACHE=0 TORCH_LOGS=perf_hints
bench() {  # name, precision, compile_mode, seconds
  local spec
  spec=$(python3 -c "import json, dataclasses; from cs336_basics.model.transformer import PRESETS; print(json.dumps(dict(name='$1', model=dataclasses.asdict(PRESETS['seed']), batch_size=16, steps=150, precision='$2', compile_mode='$3')))")
  echo "$(date -u +%H:%M:%S.%N) start $1" >> $R/phases.txt
  echo "(cd $PWD && python3 -m cs336_basics.perf.bench_run '$spec')" > $R/$1.command
  timeout $4 python3 -m cs336_basics.perf.bench_run "$spec" > $R/$1.log 2>&1
  local rc=$?
  echo "$(date -u +%H:%M:%S.%N) end $1" >> $R/phases.txt
  echo "$1 rc=$rc at $(( $(date +%s) - T0 )) s: $(grep -a '^RESULT' $R/$1.log | python3 -c 'import sys, json; r = json.loads(sys.stdin.read()[7:]); print(r["step_ms"], r["step_ms_mean"], r["step_ms_spread"], r["tokens_per_second"])' 2>/dev/null) skips: $(grep -ac 'skipping cudagraphs' $R/$1.log)"
  pack
}
bench bf16 bf16 default 75
bench delayed fp8-delayed default 75
bench delayed-cudagraphs fp8-delayed reduce-overhead 100
bench bf16-cudagraphs bf16 reduce-overhead 90
bench tensorwise-cudagraphs fp8-tensorwise reduce-overhead 90
# The branch's package over a copy of this tree, imported from there only.
mkdir -p /tmp/alt && tar --exclude=./.devshared --exclude=./.whl --exclude=./.alt -cf - . | tar -xf - -C /tmp/alt
rm -rf /tmp/alt/cs336_basics && cp -r .alt/cs336_basics /tmp/alt/ && ln -sfn "$PWD/.devshared" /tmp/shared
cd /tmp/alt; export PYTHONPATH=/tmp/site:/tmp/alt
python3 -c "import cs336_basics.precision.fp8_delayed as m, inspect; print(m.__file__, 'index_select' in inspect.getsource(m))" > $R/alt_check.txt 2>&1
bench shared-state fp8-delayed default 75
left=$(( 570 - $(date +%s) + T0 ))
if (( left > 60 )); then bench shared-state-cudagraphs fp8-delayed reduce-overhead $left; else echo "shared-state-cudagraphs SKIPPED"; fi
kill $SMI; pack
echo "total $(( $(date +%s) - T0 )) s"
