"""Anisotropic 3D U-Net (Cicek et al. 2016), as compared by Hostin et al. 2023
and Rohm et al. 2021.

Muscle MRI is strongly anisotropic (about 1 mm in-plane, 5-10 mm between
slices). The first ``inplane_levels`` levels therefore convolve with 3x3x1
kernels and pool 2x2x1, so the few slices are not merged before the in-plane
resolution is similar to the slice spacing (the nnU-Net practice); deeper
levels are isotropic 3x3x3 / 2x2x2.
"""

from __future__ import annotations

import torch
from torch import nn

from bids_muscle.seg.nets.unet2d import check_input, crop_to_shape, norm_layer, pad_to_multiple


class ConvBlock3D(nn.Sequential):
    """Two convolutions with ``kernel`` (odd sizes), instance normalisation and ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel: tuple[int, int, int], dropout: float = 0.0) -> None:
        padding = tuple(k // 2 for k in kernel)
        layers: list[nn.Module] = [
            nn.Conv3d(in_channels, out_channels, kernel, padding=padding, bias=False),
            norm_layer(out_channels),
            nn.ReLU(inplace=True),
        ]
        if dropout > 0:
            layers.append(nn.Dropout3d(dropout))
        layers += [
            nn.Conv3d(out_channels, out_channels, kernel, padding=padding, bias=False),
            norm_layer(out_channels),
            nn.ReLU(inplace=True),
        ]
        super().__init__(*layers)


class UNet3D(nn.Module):
    """3D U-Net with in-plane-only pooling at the first levels.

    Parameters
    ----------
    in_channels : int
        Image channels.
    n_classes : int
        Output classes including background.
    base_features : int
        Channels of the first level, doubled at every level.
    depth : int
        Number of poolings.
    inplane_levels : int
        How many of the first levels use 3x3x1 kernels and 2x2x1 pooling
        (0 gives an isotropic 3D U-Net).
    dropout : float
        Channel dropout in the bottleneck block.

    Shapes
    ------
    input ``(B, in_channels, X, Y, Z)`` with Z the slice axis and any sizes
    >= 1; output logits ``(B, n_classes, X, Y, Z)``. Axes are padded
    internally to multiples of ``total_stride``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        n_classes: int = 2,
        base_features: int = 16,
        depth: int = 4,
        inplane_levels: int = 2,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if depth < 1 or base_features < 1 or n_classes < 1 or in_channels < 1:
            raise ValueError("UNet3D needs depth, base_features, n_classes and in_channels >= 1")
        if not 0 <= inplane_levels <= depth:
            raise ValueError(f"inplane_levels must lie in [0, depth={depth}], got {inplane_levels}")
        self.in_channels = in_channels
        self.n_classes = n_classes
        self.depth = depth
        self.inplane_levels = inplane_levels
        widths = [base_features * 2**level for level in range(depth + 1)]
        kernels = [(3, 3, 1) if level < inplane_levels else (3, 3, 3) for level in range(depth + 1)]
        self.pool_sizes = [(2, 2, 1) if level < inplane_levels else (2, 2, 2) for level in range(depth)]
        self.encoders = nn.ModuleList()
        previous = in_channels
        for level, width in enumerate(widths):
            self.encoders.append(ConvBlock3D(previous, width, kernels[level], dropout if level == depth else 0.0))
            previous = width
        self.pools = nn.ModuleList(nn.MaxPool3d(size) for size in self.pool_sizes)
        self.upsamplers = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for level in range(depth - 1, -1, -1):
            size = self.pool_sizes[level]
            self.upsamplers.append(nn.ConvTranspose3d(widths[level + 1], widths[level], size, stride=size))
            self.decoders.append(ConvBlock3D(2 * widths[level], widths[level], kernels[level]))
        self.head = nn.Conv3d(widths[0], n_classes, 1)

    @property
    def total_stride(self) -> tuple[int, int, int]:
        """Multiples the (X, Y, Z) axes are padded to."""
        z = 2 ** (self.depth - self.inplane_levels)
        return (2**self.depth, 2**self.depth, z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_channels, 3, "UNet3D")
        x, spatial = pad_to_multiple(x, self.total_stride)
        skips = []
        for level, encoder in enumerate(self.encoders):
            x = encoder(x)
            if level < self.depth:
                skips.append(x)
                x = self.pools[level](x)
        for upsample, decoder in zip(self.upsamplers, self.decoders):
            x = decoder(torch.cat([upsample(x), skips.pop()], dim=1))
        return crop_to_shape(self.head(x), spatial)
