python3 benchmarks/profile_step.py --preset seed --precision fp8-delayed --residual_dtype bf16 --out $OUT/profile-seed-fp8-bf16res
