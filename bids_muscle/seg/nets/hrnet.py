"""High-resolution network (HRNet, Sun et al. 2019; Wang et al. 2020), the
network Hostin et al. 2023 found best because it never missed a muscle.

Instead of compressing the slice and expanding it again, HRNet keeps a
high-resolution branch through the whole network and adds lower-resolution
branches stage by stage; after every module all branches exchange
information (repeated multi-scale fusion). The segmentation head upsamples
every branch to the highest resolution, concatenates them (HRNetV2 head) and,
here, refines the result at full resolution with the stem features so muscle
borders are drawn at the input resolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bids_muscle.seg.nets.unet2d import check_input, crop_to_shape, norm_layer, pad_to_multiple


def _conv_norm(in_channels: int, out_channels: int, kernel: int = 3, stride: int = 1, relu: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2, bias=False),
        norm_layer(out_channels),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """Residual block of two 3x3 convolutions."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv_norm(channels, channels), _conv_norm(channels, channels, relu=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.body(x))


class FusionLayer(nn.Module):
    """Exchange between parallel branches: every output branch sums all inputs
    brought to its resolution (strided convolutions down, 1x1 convolution and
    bilinear upsampling up)."""

    def __init__(self, widths: list[int]) -> None:
        super().__init__()
        self.paths = nn.ModuleList()
        for i, width_i in enumerate(widths):
            row = nn.ModuleList()
            for j, width_j in enumerate(widths):
                if j == i:
                    row.append(nn.Identity())
                elif j > i:
                    row.append(_conv_norm(width_j, width_i, kernel=1, relu=False))
                else:
                    steps: list[nn.Module] = [_conv_norm(width_j, width_j, stride=2) for _ in range(i - j - 1)]
                    steps.append(_conv_norm(width_j, width_i, stride=2, relu=False))
                    row.append(nn.Sequential(*steps))
            self.paths.append(row)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for i, row in enumerate(self.paths):
            total = xs[i]
            for j, path in enumerate(row):
                if j == i:
                    continue
                y = path(xs[j])
                if j > i:
                    y = F.interpolate(y, size=xs[i].shape[2:], mode="bilinear", align_corners=False)
                total = total + y
            out.append(F.relu(total))
        return out


class HRModule(nn.Module):
    """Residual blocks on every branch followed by one fusion."""

    def __init__(self, widths: list[int], blocks_per_branch: int) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(*[BasicBlock(w) for _ in range(blocks_per_branch)]) for w in widths
        )
        self.fusion = FusionLayer(widths) if len(widths) > 1 else None

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs)]
        return self.fusion(xs) if self.fusion is not None else xs


class HRNet(nn.Module):
    """HRNet for 2D slices with ``n_branches`` parallel resolutions.

    Parameters
    ----------
    in_channels : int
        Image channels.
    n_classes : int
        Output classes including background.
    base_features : int
        Width of the highest-resolution branch (at 1/2 of the input size);
        branch ``k`` has ``base_features * 2**k`` channels at 1/2**(k+1).
    n_branches : int
        Number of parallel resolutions (4 in the original HRNet).
    modules_per_stage : int
        HR modules (blocks + fusion) in each stage; stage ``s`` runs ``s``
        branches.
    blocks_per_branch : int
        Residual blocks per branch in each module.
    head_features : int or None
        Width after concatenating the upsampled branches (default
        ``2 * base_features``).

    Shapes
    ------
    input ``(B, in_channels, H, W)``, any H, W >= 1; output logits
    ``(B, n_classes, H, W)``. Inputs are padded internally to multiples of
    ``2 ** n_branches``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        n_classes: int = 2,
        base_features: int = 16,
        n_branches: int = 4,
        modules_per_stage: int = 1,
        blocks_per_branch: int = 2,
        head_features: int | None = None,
    ) -> None:
        super().__init__()
        if n_branches < 1 or base_features < 1 or n_classes < 1 or in_channels < 1:
            raise ValueError("HRNet needs n_branches, base_features, n_classes and in_channels >= 1")
        self.in_channels = in_channels
        self.n_classes = n_classes
        self.n_branches = n_branches
        widths = [base_features * 2**k for k in range(n_branches)]
        head_features = head_features or 2 * base_features
        self.stem_full = _conv_norm(in_channels, base_features)
        self.stem_down = _conv_norm(base_features, base_features, stride=2)
        self.stages = nn.ModuleList()
        self.transitions = nn.ModuleList()
        for stage in range(1, n_branches + 1):
            if stage > 1:
                self.transitions.append(_conv_norm(widths[stage - 2], widths[stage - 1], stride=2))
            self.stages.append(
                nn.Sequential(*[HRModule(widths[:stage], blocks_per_branch) for _ in range(modules_per_stage)])
            )
        self.head_mix = _conv_norm(sum(widths), head_features, kernel=1)
        self.refine = _conv_norm(head_features + base_features, base_features)
        self.classifier = nn.Conv2d(base_features, n_classes, 1)

    @property
    def total_stride(self) -> tuple[int, int]:
        """Multiple the spatial axes are padded to."""
        return (2**self.n_branches, 2**self.n_branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_channels, 2, "HRNet")
        x, spatial = pad_to_multiple(x, self.total_stride)
        full = self.stem_full(x)
        xs = [self.stem_down(full)]
        for stage_index, stage in enumerate(self.stages):
            if stage_index > 0:
                xs = xs + [self.transitions[stage_index - 1](xs[-1])]
            xs = stage(xs)
        size = xs[0].shape[2:]
        upsampled = [xs[0]] + [F.interpolate(y, size=size, mode="bilinear", align_corners=False) for y in xs[1:]]
        mixed = self.head_mix(torch.cat(upsampled, dim=1))
        mixed = F.interpolate(mixed, size=full.shape[2:], mode="bilinear", align_corners=False)
        logits = self.classifier(self.refine(torch.cat([mixed, full], dim=1)))
        return crop_to_shape(logits, spatial)
