python3 -c "import torch; from cs336_basics.precision.verify import check_swiglu_kernels as c; print(c(torch.device('cuda')).line())"
