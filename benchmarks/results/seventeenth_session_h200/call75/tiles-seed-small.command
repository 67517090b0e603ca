python3 benchmarks/kernel_swiglu_fp8.py --M 16384 --N 3584 --D 896 --iters 20 --extra_configs 16x128w4,32x64w4,32x256w4,16x256w4,32x128w2,64x64w2 --out $OUT/tiles-seed-small.json
