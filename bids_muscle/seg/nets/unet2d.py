"""2D U-Net (Ronneberger et al. 2015), the slice-wise baseline of Hostin et al. 2023.

The module also holds the small helpers shared by every architecture of
:mod:`bids_muscle.seg.nets`: instance normalisation that works for batch size 1,
and padding of the spatial axes to a multiple of the network's total stride
(cropped back on output), so that any input size is accepted.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def norm_layer(channels: int) -> nn.GroupNorm:
    """Instance normalisation with a learned affine (one group per channel).

    Written as ``GroupNorm(channels, channels)``, which is independent of the
    batch size (training on CPU uses small batches) and, unlike
    ``InstanceNorm``, also accepts a 1-voxel feature map in training mode.
    Per-channel normalisation trained several times faster than grouped
    normalisation on the synthetic legs of the tests.
    """
    return nn.GroupNorm(channels, channels)


def pad_to_multiple(x: torch.Tensor, multiples: Sequence[int]) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Pad the spatial axes of ``x`` (B, C, *spatial) at their end to multiples.

    Edge values are replicated, which continues background rather than
    inventing a dark border.

    Returns
    -------
    padded : torch.Tensor
    spatial_shape : tuple of int
        The spatial shape before padding, for :func:`crop_to_shape`.
    """
    spatial = tuple(int(s) for s in x.shape[2:])
    if len(multiples) != len(spatial):
        raise ValueError(f"expected {len(multiples)} spatial axes, got input of shape {tuple(x.shape)}")
    extra = [(-s) % int(m) for s, m in zip(spatial, multiples)]
    if not any(extra):
        return x, spatial
    pad: list[int] = []
    for e in reversed(extra):
        pad += [0, e]
    return F.pad(x, pad, mode="replicate"), spatial


def crop_to_shape(x: torch.Tensor, spatial_shape: Sequence[int]) -> torch.Tensor:
    """Crop the spatial axes of ``x`` back to ``spatial_shape`` (start-aligned)."""
    index = (slice(None), slice(None)) + tuple(slice(0, int(s)) for s in spatial_shape)
    return x[index]


def check_input(x: torch.Tensor, in_channels: int, spatial_dims: int, name: str) -> None:
    """Raise ValueError when ``x`` is not (B, in_channels, *spatial)."""
    if x.ndim != spatial_dims + 2 or x.shape[1] != in_channels:
        raise ValueError(
            f"{name} expects input of shape (B, {in_channels}, {', '.join('S' * spatial_dims)}), "
            f"got {tuple(x.shape)}"
        )


class ConvBlock2D(nn.Sequential):
    """Two 3x3 convolutions, each followed by instance normalisation and ReLU."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            norm_layer(out_channels),
            nn.ReLU(inplace=True),
        ]
        if dropout > 0:
            layers.append(nn.Dropout2d(dropout))
        layers += [
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            norm_layer(out_channels),
            nn.ReLU(inplace=True),
        ]
        super().__init__(*layers)


class UNet2D(nn.Module):
    """Slice-wise U-Net with ``depth`` poolings and skip connections.

    Parameters
    ----------
    in_channels : int
        Image channels (1 for one contrast).
    n_classes : int
        Output classes including background.
    base_features : int
        Channels of the first level, doubled at every level (Hostin et al.
        used 24/48/96/192; the default is smaller for a 2-core CPU).
    depth : int
        Number of 2x2 max-poolings; the input is padded internally to a
        multiple of ``2 ** depth``.
    dropout : float
        Channel dropout in the bottleneck block.

    Shapes
    ------
    input ``(B, in_channels, H, W)`` with any H, W >= 1; output logits
    ``(B, n_classes, H, W)``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        n_classes: int = 2,
        base_features: int = 16,
        depth: int = 4,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if depth < 1 or base_features < 1 or n_classes < 1 or in_channels < 1:
            raise ValueError("UNet2D needs depth, base_features, n_classes and in_channels >= 1")
        self.in_channels = in_channels
        self.n_classes = n_classes
        self.depth = depth
        widths = [base_features * 2**level for level in range(depth + 1)]
        self.encoders = nn.ModuleList()
        previous = in_channels
        for level, width in enumerate(widths):
            self.encoders.append(ConvBlock2D(previous, width, dropout if level == depth else 0.0))
            previous = width
        self.pool = nn.MaxPool2d(2)
        self.upsamplers = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for level in range(depth - 1, -1, -1):
            self.upsamplers.append(nn.ConvTranspose2d(widths[level + 1], widths[level], 2, stride=2))
            self.decoders.append(ConvBlock2D(2 * widths[level], widths[level]))
        self.head = nn.Conv2d(widths[0], n_classes, 1)

    @property
    def total_stride(self) -> tuple[int, int]:
        """Multiple the spatial axes are padded to."""
        return (2**self.depth, 2**self.depth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_channels, 2, "UNet2D")
        x, spatial = pad_to_multiple(x, self.total_stride)
        skips = []
        for level, encoder in enumerate(self.encoders):
            x = encoder(x)
            if level < self.depth:
                skips.append(x)
                x = self.pool(x)
        for upsample, decoder in zip(self.upsamplers, self.decoders):
            x = decoder(torch.cat([upsample(x), skips.pop()], dim=1))
        return crop_to_shape(self.head(x), spatial)
