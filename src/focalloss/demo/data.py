"""A generated, imbalanced segmentation dataset (nothing is downloaded).

Each single-channel image has a textured background (low-frequency waves plus pixel noise)
and a few objects of three foreground classes, drawn so that they are rare and not trivially
separable by intensity:

* class 1, "cells": medium ellipses, brighter on average, a few percent of the pixels;
* class 2, "spots": small discs whose intensity overlaps the background's, ~1-2%;
* class 3, "scratches": thin line segments, slightly darker, about 1% (the rarest);

plus ``IGNORE_INDEX`` (255) on a 2-pixel border and on a few "void" blobs of saturated noise,
which the losses must skip. Everything is a deterministic function of the seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

IGNORE_INDEX = 255
CLASS_NAMES = ("background", "cells", "spots", "scratches")
NUM_CLASSES = len(CLASS_NAMES)


@dataclass
class SegmentationSet:
    images: Tensor  # (N, 1, H, W) float32
    masks: Tensor  # (N, H, W) int64, IGNORE_INDEX where void

    def class_frequencies(self) -> list[float]:
        """Share of each class among the labelled (non-ignored) pixels; sums to 1."""
        valid = self.masks[self.masks != IGNORE_INDEX]
        counts = torch.bincount(valid, minlength=NUM_CLASSES).double()
        return (counts / counts.sum()).tolist()

    def pixel_counts(self) -> list[int]:
        valid = self.masks[self.masks != IGNORE_INDEX]
        return torch.bincount(valid, minlength=NUM_CLASSES).tolist()

    def ignored_fraction(self) -> float:
        return float((self.masks == IGNORE_INDEX).double().mean())


def _grid(size: int) -> tuple[Tensor, Tensor]:
    coords = torch.arange(size, dtype=torch.float32)
    return torch.meshgrid(coords, coords, indexing="ij")


def make_dataset(count: int, size: int, seed: int) -> SegmentationSet:
    """``count`` images of ``size`` x ``size`` pixels, deterministic from ``seed``."""
    if size < 16:
        raise ValueError(f"size: expected at least 16 pixels, got {size}")
    g = torch.Generator().manual_seed(seed)
    yy, xx = _grid(size)
    images = torch.empty(count, 1, size, size)
    masks = torch.zeros(count, size, size, dtype=torch.long)
    scale = size / 64.0

    def rand(*shape: int) -> Tensor:
        return torch.rand(*shape, generator=g)

    for i in range(count):
        # Background texture: a few random plane waves plus noise.
        image = torch.zeros(size, size)
        for _ in range(3):
            fy, fx = (rand(2) - 0.5) * 0.5
            phase = rand(1) * 6.283
            image += 0.25 * torch.sin(fy * yy + fx * xx + phase)
        image += 0.3 * torch.randn(size, size, generator=g)
        mask = masks[i]

        for _ in range(int(2 + rand(1).item() * 2)):  # cells
            cy, cx = rand(2) * size
            ry, rx = (3 + rand(2) * 3) * scale
            angle = rand(1) * 3.1416
            dy, dx = yy - cy, xx - cx
            u = dy * torch.cos(angle) + dx * torch.sin(angle)
            v = -dy * torch.sin(angle) + dx * torch.cos(angle)
            inside = (u / ry) ** 2 + (v / rx) ** 2 <= 1
            mask[inside] = 1
            image[inside] += 0.6 + 0.2 * torch.randn(int(inside.sum()), generator=g)

        for _ in range(int(3 + rand(1).item() * 4)):  # spots
            cy, cx = rand(2) * size
            r = (1.2 + rand(1) * 1.3) * scale
            inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
            mask[inside] = 2
            image[inside] += 0.7 + 0.1 * torch.randn(int(inside.sum()), generator=g)

        for _ in range(int(1 + rand(1).item() * 1.6)):  # scratches
            y0, x0 = rand(2) * size
            angle = rand(1) * 3.1416
            length = (10 + rand(1) * 14) * scale
            dy, dx = yy - y0, xx - x0
            along = dy * torch.sin(angle) + dx * torch.cos(angle)
            across = -dy * torch.cos(angle) + dx * torch.sin(angle)
            inside = (along.abs() <= length / 2) & (across.abs() <= 0.7 * scale)
            mask[inside] = 3
            image[inside] -= 0.9

        if rand(1).item() < 0.5:  # a void blob: unlabelled, saturated noise
            cy, cx = rand(2) * size
            r = (2 + rand(1) * 3) * scale
            inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
            mask[inside] = IGNORE_INDEX
            image[inside] = 2.0 * torch.randn(int(inside.sum()), generator=g)

        border = 2
        mask[:border], mask[-border:], mask[:, :border], mask[:, -border:] = (IGNORE_INDEX,) * 4
        images[i, 0] = image
    return SegmentationSet(images=images, masks=masks)
