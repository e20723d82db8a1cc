"""A small but real distributed training script (PyTorch DDP) for flex's training examples.

Launched by torchrun: on one node with --standalone, or as a flex gang where each member runs torchrun
with --nnodes $WORLD_SIZE --node-rank $RANK --master-addr $MASTER_ADDR --master-port $MASTER_PORT.
Trains a small MLP on synthetic regression data and saves a checkpoint from rank 0.
"""

import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


def main():
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank, local_rank = dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.manual_seed(1234 + rank)
    model = DistributedDataParallel(torch.nn.Sequential(
        torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 1)).to(device))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    weights = torch.randn(64, 1, generator=torch.Generator().manual_seed(0)).to(device)
    steps = int(os.environ.get("STEPS", "500"))
    for step in range(steps):
        x = torch.randn(128, 64, device=device)
        loss = torch.nn.functional.mse_loss(model(x), x @ weights)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if rank == 0 and step % 100 == 0:
            print("step %d loss %.4f" % (step, loss.item()), flush=True)
    if rank == 0:
        torch.save(model.module.state_dict(), os.environ.get("CHECKPOINT", "model.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
