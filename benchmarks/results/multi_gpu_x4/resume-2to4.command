torchrun --standalone --nproc_per_node 4 train_h100.py --resume /tmp/results_multi/seed-bf16-2gpu --max_steps 40 --sample_tokens 0
