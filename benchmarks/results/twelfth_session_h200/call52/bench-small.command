python3 optimize_performance.py --preset small --steps 10 --timeout 60 --no_layers --modes bf16-compile,fp8-delayed-compile,fp8-delayed-compile-fp32res --out /root/out/r/bench-small
