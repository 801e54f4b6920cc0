"""A small U-Net: encoder-decoder with skip connections, written for the demo."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _Block(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class UNet(nn.Module):
    """U-Net with ``depth`` poolings; any input size (padded to a multiple of ``2**depth``
    and cropped back, so the logits always have the input's height and width).

    Example:
        >>> import torch
        >>> from focalloss.demo.unet import UNet
        >>> UNet(in_channels=1, num_classes=4)(torch.zeros(2, 1, 37, 50)).shape
        torch.Size([2, 4, 37, 50])
    """

    def __init__(
        self, in_channels: int = 1, num_classes: int = 4, width: int = 12, depth: int = 3
    ) -> None:
        super().__init__()
        if depth < 1 or width < 1:
            raise ValueError(f"depth and width: expected >= 1, got depth={depth}, width={width}")
        channels = [width * 2**i for i in range(depth + 1)]
        self.depth = depth
        self.down = nn.ModuleList(
            [_Block(in_channels, channels[0])]
            + [_Block(channels[i], channels[i + 1]) for i in range(depth)]
        )
        self.up = nn.ModuleList(
            [nn.ConvTranspose2d(channels[i + 1], channels[i], 2, stride=2) for i in range(depth)]
        )
        self.merge = nn.ModuleList([_Block(2 * channels[i], channels[i]) for i in range(depth)])
        self.head = nn.Conv2d(channels[0], num_classes, 1)  # the segmentation head

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"x: expected (N, C, H, W) images, got shape {tuple(x.shape)}")
        height, width = x.shape[-2:]
        multiple = 2**self.depth
        pad_h, pad_w = (-height) % multiple, (-width) % multiple
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        skips = []
        for i, block in enumerate(self.down):
            x = block(x)
            if i < self.depth:
                skips.append(x)
                x = F.max_pool2d(x, 2)
        for i in reversed(range(self.depth)):
            x = self.merge[i](torch.cat([self.up[i](x), skips[i]], dim=1))
        return self.head(x)[..., :height, :width]
