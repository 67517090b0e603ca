python3 benchmarks/gemm_fast_accum.py --out $OUT/gemm.json
