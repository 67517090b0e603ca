python3 optimize_performance.py --preset seed --steps 30 --timeout 300 --no_layers --modes bf16-compile,fp8-delayed-compile --tune_kernels --out $OUT/bench-tuned
