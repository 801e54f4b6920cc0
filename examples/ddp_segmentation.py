"""Train the demo U-Net with DistributedDataParallel and an exactly normalised focal loss.

    torchrun --nproc_per_node 2 examples/ddp_segmentation.py            # CPU, gloo
    torchrun --nproc_per_node 4 examples/ddp_segmentation.py --device cuda   # GPUs, NCCL

Each rank trains on its own shard of the generated dataset. With ``sync_normalizer=True`` the
loss divides by the number of labelled pixels of *all* ranks (one all-reduce per step), so the
gradients DDP averages are those of one process training on the whole global batch, however
the ignored pixels fall on the ranks. The printed loss is the global mean.
"""

from __future__ import annotations

import argparse
import gc
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from focalloss import FocalLoss
from focalloss.demo.data import IGNORE_INDEX, NUM_CLASSES, make_dataset
from focalloss.demo.unet import UNet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=8, help="per rank")
    parser.add_argument("--image-size", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    backend = "nccl" if args.device == "cuda" else "gloo"
    dist.init_process_group(backend)  # torchrun sets RANK, WORLD_SIZE, MASTER_ADDR/PORT
    rank, world = dist.get_rank(), dist.get_world_size()
    if args.device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    device = (
        torch.device(args.device, torch.cuda.current_device())
        if args.device == "cuda"
        else torch.device("cpu")
    )
    try:
        train(args, rank, world, device)
    finally:
        gc.collect()  # free the DDP model (it holds the group) before destroying the group
        dist.barrier()
        dist.destroy_process_group()


def train(args: argparse.Namespace, rank: int, world: int, device: torch.device) -> None:
    data = make_dataset(64 * world, args.image_size, seed=args.seed)
    shard = slice(rank, None, world)  # each rank its own images
    images, masks = data.images[shard], data.masks[shard]
    torch.manual_seed(args.seed)  # the same initial weights on every rank
    model = DistributedDataParallel(
        UNet(1, NUM_CLASSES).to(device),
        device_ids=[device.index] if device.type == "cuda" else None,
    )
    criterion = FocalLoss(gamma=2.0, ignore_index=IGNORE_INDEX, sync_normalizer=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    order = torch.Generator().manual_seed(args.seed + rank)
    for step in range(1, args.steps + 1):
        index = torch.randint(0, len(images), (args.batch_size,), generator=order)
        loss = criterion(model(images[index].to(device)), masks[index].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 10 == 0 or step == args.steps:
            global_mean = loss.detach().clone()
            dist.all_reduce(global_mean)  # the mean of the ranks' values is the global mean
            if rank == 0:
                print(f"step {step:4d}  focal loss (global mean) {global_mean.item() / world:.4f}")


if __name__ == "__main__":
    main()
