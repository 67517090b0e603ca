python3 benchmarks/kernel_norm_fp8.py --M 16384 --D 896 --out $OUT/kernel-seed.json
