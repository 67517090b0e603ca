python3 benchmarks/kernel_norm_fp8.py --M 16384 --D 2048 --out $OUT/kernel-1b.json
