python3 optimize_performance.py --timeout 200 --no_layers --out /tmp/results_b/seed-long --preset seed --steps 150 --modes bf16-compile,fp8-delayed-compile,fp8-tensorwise-compile
