python3 benchmarks/weight_cast_cost.py --out $OUT/weight_cast_cost.json
