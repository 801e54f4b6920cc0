"""Loss normalisation across ``torch.distributed`` ranks (DDP).

DDP averages parameter gradients over the ``W`` ranks. A loss that divides its rank's sum
``S_r`` by a per-rank count ``D_r`` (valid pixels, the weight sum, positive anchors) therefore
trains a different model depending on how many GPUs there are and how ignored pixels fall on
them. With ``sync_normalizer=True`` the losses all-reduce the divisor instead
(``D = sum_r D_r``, summed without gradient) and each rank returns

    L_r = W * S_r / D

so that DDP's average of the gradients, ``(1 / W) * sum_r dL_r``, is the gradient of the global
mean ``sum_r S_r / D`` of one process training on the concatenation of all ranks' batches, and
the average of the returned values ``(1 / W) * sum_r L_r`` is that global mean. A rank whose
targets are all ignored (``D_r = 0``) contributes ``S_r = 0``; if ``D = 0`` the loss is 0 with
zero gradients. RetinaNet's clamp of a normalizer to at least 1 is applied to the global sum.
Without an initialised default process group, or with one rank, nothing changes.

The all-reduce uses PyTorch's functional collectives, which ``torch.compile`` traces into the
graph (no graph break).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["global_divisor"]


def world_size() -> int:
    """The default process group's size, or 1 without an initialised group."""
    if not dist.is_available() or not dist.is_initialized():
        return 1
    return dist.get_world_size()


def global_divisor(divisor: Tensor) -> tuple[Tensor, int]:
    """``(sum of divisor over ranks, world size)``; the input unchanged outside DDP.

    The sum carries no gradient. Every rank must call this (it is a collective).
    """
    size = world_size()
    if size == 1:
        return divisor, 1
    from torch.distributed import _functional_collectives as funcol

    summed = funcol.all_reduce(divisor.detach().clone(), "sum", dist.group.WORLD)
    if isinstance(summed, funcol.AsyncCollectiveTensor):
        summed = summed.wait()
    return torch.as_tensor(summed), size
