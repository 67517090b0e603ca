python3 optimize_performance.py --preset seed --steps 30 --timeout 120 --no_layers --modes bf16-compile,fp8-delayed-compile --out $OUT/bench-seed
