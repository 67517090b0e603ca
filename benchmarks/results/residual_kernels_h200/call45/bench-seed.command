python3 optimize_performance.py --preset seed --steps 30 --timeout 150 --no_layers --modes bf16-compile,bf16-compile-bf16res,fp8-delayed-compile,fp8-delayed-compile-bf16res --out $OUT/bench-seed
