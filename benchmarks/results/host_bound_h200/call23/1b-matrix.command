python3 optimize_performance.py --timeout 200 --no_layers --out /tmp/results_b/1b-matrix --preset 1b --steps 12 --compare-reference --modes bf16-compile,fp8-delayed-compile,fp8-tensorwise-compile
