python3 benchmarks/profile_step.py --preset seed --preset 1b --batch_size 8 --precision bf16 --out $OUT/profile-1b-bf16
