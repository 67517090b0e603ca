python3 optimize_performance.py --preset seed --steps 30 --timeout 150 --no_layers --compare-reference --modes bf16-compile,fp8-delayed-compile,fp8-delayed-compile-w13 --out $OUT/bench-seed
