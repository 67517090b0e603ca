python3 optimize_performance.py --preset seed --steps 30 --timeout 200 --no_layers --modes fp8-delayed-compile --inductor 'triton.prefer_nd_tiling=True' --out $OUT/nd_tiling
