python3 optimize_performance.py --preset seed --steps 30 --timeout 200 --no_layers --modes bf16-compile,fp8-delayed-compile,fp8-delayed-compile-wcache --out $OUT/bench-seed
