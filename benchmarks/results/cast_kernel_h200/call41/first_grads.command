FIRST_GRADS=seed:eager:all:fused:check python3 benchmarks/debug_kernel_casts.py
