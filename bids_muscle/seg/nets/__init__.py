"""Segmentation and region-classification networks (pure PyTorch).

Architectures compared by Hostin et al. 2023 (U-Net 2D, U-Net 3D, TransUNet,
HRNet) and the thigh/calf classifier of Agosti et al. 2021, one class per
module. :func:`build_network` creates one from its registry name and
constructor arguments, which is how model cards describe them.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from bids_muscle.seg.nets.hrnet import HRNet
from bids_muscle.seg.nets.region import RegionClassifier
from bids_muscle.seg.nets.transunet import TransUNet
from bids_muscle.seg.nets.unet2d import UNet2D
from bids_muscle.seg.nets.unet3d import UNet3D

NETWORKS: dict[str, type[nn.Module]] = {
    "unet2d": UNet2D,
    "unet3d": UNet3D,
    "transunet": TransUNet,
    "hrnet": HRNet,
    "region": RegionClassifier,
}

#: Spatial dimensions of the input of each network (slice-wise 2, volume 3).
SPATIAL_DIMS: dict[str, int] = {"unet2d": 2, "unet3d": 3, "transunet": 2, "hrnet": 2, "region": 2}

#: Networks that output a per-voxel segmentation (the others classify).
SEGMENTATION_NETWORKS: tuple[str, ...] = ("unet2d", "unet3d", "transunet", "hrnet")


def build_network(name: str, **kwargs: Any) -> nn.Module:
    """Create the network registered as ``name`` with constructor ``kwargs``.

    Raises
    ------
    ValueError
        Unknown name or arguments the constructor does not accept.
    """
    try:
        cls = NETWORKS[name]
    except KeyError:
        raise ValueError(f"unknown network {name!r}; expected one of {sorted(NETWORKS)}") from None
    try:
        return cls(**kwargs)
    except TypeError as error:
        raise ValueError(f"invalid arguments for network {name!r}: {error}") from None


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


__all__ = [
    "HRNet",
    "NETWORKS",
    "RegionClassifier",
    "SEGMENTATION_NETWORKS",
    "SPATIAL_DIMS",
    "TransUNet",
    "UNet2D",
    "UNet3D",
    "build_network",
    "count_parameters",
]
