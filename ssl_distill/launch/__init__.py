"""Launching: one process, torchrun DDP (the same `ssl-distill train` command) and SLURM through
submitit: `launch.submit` for training jobs (checkpoint-on-signal, requeue), `launch.executors` for
the executors that training and evaluation share."""
