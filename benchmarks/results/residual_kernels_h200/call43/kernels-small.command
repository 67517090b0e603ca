python3 benchmarks/kernel_swiglu_fp8.py --M 8192 --N 1024 --out $OUT/kernels-small.json
