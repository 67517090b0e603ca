python3 benchmarks/profile_step.py --preset seed --use_fp8 --out $OUT/profile-seed-fp8
