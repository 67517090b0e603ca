python3 benchmarks/kernel_swiglu_fp8.py --M 16384 --N 5632 --D 2048 --iters 20 --variants --out $OUT/tma-1b.json
