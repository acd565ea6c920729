"""TransUNet (Chen et al. 2021), as compared by Hostin et al. 2023.

A convolutional encoder reduces the slice to 1/2**depth of its size; every
position of that lowest-resolution feature map becomes one token of a small
transformer encoder, which relates distant parts of the leg (the motivation
given by Hostin et al.). A learned position embedding is stored on a fixed
grid and bilinearly interpolated to the token grid of each input, so any
input size is accepted. A U-Net decoder with skip connections restores the
resolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bids_muscle.seg.nets.unet2d import ConvBlock2D, check_input, crop_to_shape, pad_to_multiple


class TransUNet(nn.Module):
    """CNN encoder + transformer bottleneck + U-Net decoder for 2D slices.

    Parameters
    ----------
    in_channels : int
        Image channels.
    n_classes : int
        Output classes including background.
    base_features : int
        Channels of the first encoder level, doubled at every level.
    depth : int
        Number of poolings before the transformer.
    embed_dim : int
        Token width of the transformer.
    n_layers : int
        Transformer encoder layers.
    n_heads : int
        Attention heads (must divide ``embed_dim``).
    mlp_ratio : float
        Width of the feed-forward layer relative to ``embed_dim``.
    position_grid : int
        Side of the stored position-embedding grid (interpolated to the
        actual token grid).
    dropout : float
        Dropout inside the transformer.

    Shapes
    ------
    input ``(B, in_channels, H, W)``, any H, W >= 1; output logits
    ``(B, n_classes, H, W)``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        n_classes: int = 2,
        base_features: int = 16,
        depth: int = 4,
        embed_dim: int = 128,
        n_layers: int = 2,
        n_heads: int = 4,
        mlp_ratio: float = 2.0,
        position_grid: int = 16,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if depth < 1 or base_features < 1 or n_classes < 1 or in_channels < 1:
            raise ValueError("TransUNet needs depth, base_features, n_classes and in_channels >= 1")
        if embed_dim % n_heads:
            raise ValueError(f"n_heads={n_heads} must divide embed_dim={embed_dim}")
        self.in_channels = in_channels
        self.n_classes = n_classes
        self.depth = depth
        widths = [base_features * 2**level for level in range(depth + 1)]
        self.encoders = nn.ModuleList()
        previous = in_channels
        for width in widths[:-1]:
            self.encoders.append(ConvBlock2D(previous, width))
            previous = width
        self.pool = nn.MaxPool2d(2)
        self.to_tokens = nn.Conv2d(widths[-2], embed_dim, 1)
        self.position = nn.Parameter(torch.zeros(1, embed_dim, position_grid, position_grid))
        nn.init.trunc_normal_(self.position, std=0.02)
        layer = nn.TransformerEncoderLayer(
            d_model=embed_dim,
            nhead=n_heads,
            dim_feedforward=int(round(embed_dim * mlp_ratio)),
            dropout=dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.transformer = nn.TransformerEncoder(layer, num_layers=n_layers, enable_nested_tensor=False)
        self.token_norm = nn.LayerNorm(embed_dim)
        self.from_tokens = ConvBlock2D(embed_dim, widths[-1])
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
        check_input(x, self.in_channels, 2, "TransUNet")
        x, spatial = pad_to_multiple(x, self.total_stride)
        skips = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
            x = self.pool(x)
        tokens = self.to_tokens(x)
        b, c, h, w = tokens.shape
        position = F.interpolate(self.position, size=(h, w), mode="bilinear", align_corners=False)
        tokens = (tokens + position).flatten(2).transpose(1, 2)
        tokens = self.token_norm(self.transformer(tokens))
        x = self.from_tokens(tokens.transpose(1, 2).reshape(b, c, h, w))
        for upsample, decoder in zip(self.upsamplers, self.decoders):
            x = decoder(torch.cat([upsample(x), skips.pop()], dim=1))
        return crop_to_shape(self.head(x), spatial)
