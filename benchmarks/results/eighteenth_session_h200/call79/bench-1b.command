python3 optimize_performance.py --preset 1b --steps 15 --no_layers --out $OUT/bench-1b --timeout 150 --modes bf16-compile,fp8-delayed-compile
