python3 optimize_performance.py --preset 1b --steps 12 --timeout 120 --no_layers --modes bf16-compile,fp8-delayed-compile --compare-reference --out $OUT/bench-1b
