python3 benchmarks/profile_step.py --preset seed --precision bf16 --out $OUT/profile-seed-bf16
