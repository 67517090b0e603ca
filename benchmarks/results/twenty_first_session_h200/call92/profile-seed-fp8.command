python3 benchmarks/profile_step.py --preset seed --precision fp8-delayed --out $OUT/profile-seed-fp8
