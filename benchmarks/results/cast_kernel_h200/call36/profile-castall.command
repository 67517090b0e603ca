python3 benchmarks/profile_step.py --preset seed --precision fp8-delayed --kernel_casts all --out $OUT/profile-castall
