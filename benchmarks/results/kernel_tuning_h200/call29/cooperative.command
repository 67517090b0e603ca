python3 optimize_performance.py --preset seed --steps 30 --timeout 200 --no_layers --modes fp8-delayed-compile --inductor 'triton.cooperative_reductions=True' --out $OUT/cooperative
