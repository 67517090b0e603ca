python3 optimize_performance.py --preset 1b --steps 20 --timeout 100 --no_layers --compare-reference --modes bf16-compile,fp8-delayed-compile --out $OUT/bench-1b
