"""Shapes, sizes and gradients of the segmentation networks."""

from __future__ import annotations

import pytest
import torch

from bids_muscle.seg.nets import NETWORKS, build_network, count_parameters

SMALL = {
    "unet2d": {"base_features": 4, "depth": 3},
    "transunet": {"base_features": 4, "depth": 3, "embed_dim": 16, "n_heads": 2, "position_grid": 4},
    "hrnet": {"base_features": 4, "n_branches": 3},
    "unet3d": {"base_features": 4, "depth": 3, "inplane_levels": 2},
    "region": {"base_features": 4, "input_size": 32},
}
SIZES_2D = [(1, 37, 53), (2, 64, 64), (1, 9, 20)]
SIZES_3D = [(1, 37, 29, 5), (2, 16, 24, 1), (1, 20, 20, 9)]


@pytest.mark.parametrize("name", ["unet2d", "transunet", "hrnet", "unet3d"])
def test_segmenters_map_input_to_class_maps_of_same_size(name):
    torch.manual_seed(0)
    net = build_network(name, in_channels=1, n_classes=5, **SMALL[name]).eval()
    sizes = SIZES_3D if name == "unet3d" else SIZES_2D
    with torch.no_grad():
        for batch, *spatial in sizes:
            out = net(torch.randn(batch, 1, *spatial))
            assert tuple(out.shape) == (batch, 5, *spatial)
            assert torch.isfinite(out).all()


def test_two_channel_input_and_region_classifier_output():
    net = build_network("unet2d", in_channels=2, n_classes=3, **SMALL["unet2d"]).eval()
    assert tuple(net(torch.randn(2, 2, 30, 41)).shape) == (2, 3, 30, 41)
    classifier = build_network("region", n_classes=2, **SMALL["region"]).eval()
    for shape in [(3, 1, 50, 70), (1, 1, 128, 128), (2, 1, 20, 33)]:
        assert tuple(classifier(torch.randn(*shape)).shape) == (shape[0], 2)


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_default_networks_are_small_and_every_parameter_learns(name):
    with torch.device("meta"):
        net = build_network(name, n_classes=14)
    assert count_parameters(net) <= 10_000_000
    small = build_network(name, n_classes=3, **SMALL[name])
    x = torch.randn(2, 1, 24, 24, 4) if name == "unet3d" else torch.randn(2, 1, 24, 24)
    small(x).square().mean().backward()
    missing = [n for n, p in small.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


def test_padding_does_not_leak_into_the_output_region():
    """A network sees the same content whether the caller pads or it pads
    internally: the output on the original region must match."""
    torch.manual_seed(1)
    net = build_network("unet2d", n_classes=2, **SMALL["unet2d"]).eval()
    x = torch.randn(1, 1, 21, 30)
    padded = torch.nn.functional.pad(x, (0, 2, 0, 3), mode="replicate")
    with torch.no_grad():
        torch.testing.assert_close(net(x), net(padded)[..., :21, :30])


def test_unet3d_pools_in_plane_only_at_the_first_levels():
    net = build_network("unet3d", n_classes=2, depth=4, inplane_levels=2, base_features=4)
    assert net.total_stride == (16, 16, 4)
    assert [tuple(p.kernel_size) for p in net.pools] == [(2, 2, 1), (2, 2, 1), (2, 2, 2), (2, 2, 2)]


def test_registry_rejects_unknown_names_and_arguments():
    with pytest.raises(ValueError, match="unknown network"):
        build_network("vnet")
    with pytest.raises(ValueError, match="invalid arguments"):
        build_network("unet2d", widths=3)
    with pytest.raises(ValueError, match="expects input"):
        build_network("hrnet", in_channels=1, **SMALL["hrnet"])(torch.randn(1, 2, 16, 16))
