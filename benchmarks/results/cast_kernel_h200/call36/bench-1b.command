python3 optimize_performance.py --preset 1b --steps 20 --timeout 150 --no_layers --modes bf16-compile,fp8-delayed-compile,fp8-delayed-compile-castgrads,fp8-delayed-compile-castall --out $OUT/bench-1b
