python3 benchmarks/profile_step.py --preset seed --preset 1b --batch_size 8 --precision fp8-delayed --out $OUT/profile-1b-fp8
