python3 optimize_performance.py --preset 1b --steps 15 --timeout 200 --no_layers --modes bf16-compile,fp8-delayed-compile  --out $OUT/1b-base
