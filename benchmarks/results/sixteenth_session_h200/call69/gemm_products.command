python3 benchmarks/gemm_products.py --out $OUT/gemm_products.json
