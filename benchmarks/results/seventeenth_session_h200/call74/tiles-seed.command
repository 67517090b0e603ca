python3 benchmarks/kernel_swiglu_fp8.py --M 16384 --N 3584 --D 896 --iters 20 --extra_configs 128x256w8,256x128w8,128x128w4,256x64w8 --variants --out $OUT/tiles-seed.json
