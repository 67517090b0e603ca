# Shared by the one-GPU device scripts of train_h100.py runs, optimize_performance.py matrices and seed-step
# profiles (sourced after device_env.sh, with R, T0 and PACK set, and FLAGS for run(): what every run shares). A GPU log every 100 ms into $R/smi.csv,
# each run's command, log and phase times; results packed into $OUT/$PACK after each run or profile, so a call
# cut short still returns the finished ones.
gpu_log_start() {
  nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,temperature.gpu,utilization.gpu,clocks_event_reasons.active \
    --format=csv -lms 100 > $R/smi.csv 2> $R/smi.err &
  SMI=$!
}
pack() { tar czf $OUT/$PACK -C $R .; }
run() {  # name, seconds, flags...
  local name=$1 secs=$2; shift 2
  echo "python3 train_h100.py $FLAGS --out_dir $R/$name $*" > $R/$name.command
  echo "$(date -u +%H:%M:%S.%N) start $name" >> $R/phases.txt
  timeout $secs python3 train_h100.py $FLAGS --out_dir $R/$name "$@" 2>&1 | tr '\r' '\n' | grep -v "step/s, loss" > $R/$name.log
  echo "$(date -u +%H:%M:%S.%N) end $name" >> $R/phases.txt
  echo "$name rc=${PIPESTATUS[0]} at $(( $(date +%s) - T0 )) s: $(grep -a '^trained\|^interrupted after' $R/$name.log)"
  rm -rf $R/$name/checkpoints $R/$name/tokenizer.json; pack
}
profile() {  # name, seconds, flags...: benchmarks/profile_step.py on the seed model (the Chrome trace stays here)
  local name=$1 secs=$2; shift 2
  echo "python3 benchmarks/profile_step.py --preset seed $* --out \$OUT/$name" > $R/$name.command
  timeout $secs python3 benchmarks/profile_step.py --preset seed "$@" --out $R/$name > $R/$name.log 2>&1
  echo "$name rc=$? at $(( $(date +%s) - T0 )) s: $(grep -a -A12 'per step:' $R/$name.log)"
  rm -f $R/$name/trace.json; pack
}
left() { echo $(( 585 - $(date +%s) + T0 )); }  # seconds left of the call's 600, counted from before its set-up (NOTES 94)
bench() {  # name, seconds it needs at least, seconds it may take at most, optimize_performance.py flags...: one matrix,
           # started only if `least` is left, its rows printed; $BENCH_ENV (e.g. an inductor cache) goes into its command
  local name=$1 least=$2 most=$3; shift 3
  (( $(left) < least )) && { echo "$name SKIPPED ($(left) s left)"; return; }
  echo "${BENCH_ENV:+$BENCH_ENV }python3 optimize_performance.py $* --out \$OUT/$name" > $R/$name.command
  timeout $(( $(left) < most ? $(left) : most )) python3 optimize_performance.py "$@" --out $R/$name 2>&1 \
    | tr '\r' '\n' | grep -v "config/s\]\|^configurations:" > $R/$name.log
  echo "$name at $(( $(date +%s) - T0 )) s:"
  python3 -c "import json; [print(' ', r.get('name'), r.get('compile_mode'), r.get('step_ms_mean'), r.get('tokens_per_second'), r.get('warmup_seconds'), r.get('error', ''), sep='  ') for r in json.load(open('$R/$name/matrix.json'))['rows']]"
  pack
}
