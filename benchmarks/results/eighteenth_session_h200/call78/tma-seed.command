python3 benchmarks/kernel_swiglu_fp8.py --M 16384 --N 3584 --D 896 --iters 20 --variants --variant_filter tma --out $OUT/tma-seed.json
