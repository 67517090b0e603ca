python3 optimize_performance.py --preset 1b --steps 15 --no_layers --out $OUT/bench-1b-max-autotune --timeout 330 --compile_mode max-autotune --modes fp8-delayed-compile
