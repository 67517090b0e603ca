python3 benchmarks/kernel_swiglu_fp8.py --out $OUT/kernels.json
