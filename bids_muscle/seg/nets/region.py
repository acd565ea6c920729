"""Thigh/calf classifier: the inner node of the tree of Agosti et al. 2021.

The slice is resized to a fixed square (128 x 128 in the paper, with
anti-aliasing) and passed through residual blocks that halve the resolution
and double the channels; the features of every level are pooled and
collected into one vector for a fully connected classifier. The caller then
routes the image to the segmenter of the predicted region.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bids_muscle.seg.nets.unet2d import check_input


class ResidualDownBlock(nn.Module):
    """Shortcut convolution (``kernel = stride``) + two 3x3 convolutions.

    Batch normalisation as in the paper: per-instance normalisation would
    remove the very channel means that global pooling passes to the
    classifier. The first block of the paper uses a 1x1 shortcut with stride 1, the others
    a 2x2 shortcut with stride 2 that also halves the resolution.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.shortcut = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, stride, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
        )
        self.body = nn.Sequential(
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut(x)
        return F.relu(shortcut + self.body(F.relu(shortcut)))


class RegionClassifier(nn.Module):
    """Classify a 2D slice as thigh or calf (or any ``n_classes`` regions).

    Parameters
    ----------
    in_channels : int
        Image channels.
    n_classes : int
        Number of regions (2: thigh, calf).
    base_features : int
        Channels of the first block, doubled at each of the ``n_blocks``.
    n_blocks : int
        Residual blocks (5 in the paper).
    input_size : int
        Side of the square the slice is resized to.
    dropout : float
        Dropout before the fully connected layer.

    Shapes
    ------
    input ``(B, in_channels, H, W)``, any H, W >= 1; output logits
    ``(B, n_classes)``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        n_classes: int = 2,
        base_features: int = 16,
        n_blocks: int = 5,
        input_size: int = 128,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        if n_blocks < 1 or base_features < 1 or n_classes < 1 or in_channels < 1 or input_size < 2**n_blocks:
            raise ValueError("RegionClassifier needs positive sizes and input_size >= 2**n_blocks")
        self.in_channels = in_channels
        self.n_classes = n_classes
        self.input_size = input_size
        widths = [base_features * 2**k for k in range(n_blocks)]
        self.blocks = nn.ModuleList()
        previous = in_channels
        for k, width in enumerate(widths):
            self.blocks.append(ResidualDownBlock(previous, width, stride=1 if k == 0 else 2))
            previous = width
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(sum(widths), n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_channels, 2, "RegionClassifier")
        if tuple(x.shape[2:]) != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", antialias=True, align_corners=False)
        pooled = []
        for block in self.blocks:
            x = block(x)
            pooled.append(x.mean(dim=(2, 3)))
        return self.fc(self.dropout(torch.cat(pooled, dim=1)))
