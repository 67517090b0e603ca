python3 benchmarks/kernel_swiglu_fp8.py --M 16384 --N 5632 --out $OUT/kernels-1b.json
