python3 optimize_performance.py --preset seed --steps 30 --timeout 200 --no_layers --modes bf16-compile,fp8-delayed-compile --inductor 'triton.multi_kernel=1' --out $OUT/seed-multi_kernel
