# Shared by the one-GPU device scripts of train_h100.py runs and seed-step profiles (sourced after device_env.sh,
# with R, T0 and PACK set, and FLAGS for run(): what every run shares). A GPU log every 100 ms into $R/smi.csv,
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
