python3 -c "import torch; from cs336_basics.training.setup import check_fused_swiglu_kernels as c
for M, N in ((8192, 1024), (16384, 3584), (16384, 5632)): c(M, N, torch.device('cuda'))"
