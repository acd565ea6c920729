"""Model cards: saving, loading, integrity and architecture checks."""

from __future__ import annotations

import json

import pytest
import torch

from bids_muscle.seg.nets import build_network
from bids_muscle.seg.zoo import ModelCard, list_models, load_model, save_model, sha256_file

ARGS = {"in_channels": 1, "n_classes": 4, "base_features": 4, "depth": 2}


def make_card(name: str = "thigh_test") -> ModelCard:
    return ModelCard(
        name=name,
        architecture="unet2d",
        arguments=dict(ARGS),
        region="thigh",
        labels=[1, 2, 3],
        input_contrast="T1w",
        voxel_size_mm=[1.5, 1.5, None],
        training_data=[{"name": "synthetic", "licence": "Apache-2.0"}],
        licence="Apache-2.0",
        validation={"val_dice": 0.9},
    )


@pytest.fixture()
def saved(tmp_path):
    torch.manual_seed(0)
    net = build_network("unet2d", **ARGS)
    card_path = save_model(net, make_card(), tmp_path)
    return net, card_path


def test_save_and_load_round_trip(saved, tmp_path):
    net, card_path = saved
    assert card_path == tmp_path / "thigh_test.json"
    data = json.loads(card_path.read_text())
    assert data["sha256"] == sha256_file(tmp_path / "thigh_test.pt")
    loaded, card = load_model(card_path)
    assert card.labels == [1, 2, 3] and card.voxel_size_mm == [1.5, 1.5, None] and card.n_classes == 4
    x = torch.randn(2, 1, 19, 23)
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x))
    by_name, _ = load_model("thigh_test", model_dir=tmp_path)
    package = [c.name for c in list_models()]
    assert [c.name for c in list_models(tmp_path)] == package + ["thigh_test"]
    assert isinstance(by_name, torch.nn.Module)


def test_wrong_sha256_is_refused(saved, tmp_path):
    _, card_path = saved
    data = json.loads(card_path.read_text())
    data["sha256"] = "0" * 64
    card_path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"sha256 of .*thigh_test\.pt"):
        load_model(card_path)


def test_tampered_weights_are_refused(saved, tmp_path):
    _, card_path = saved
    weights = tmp_path / "thigh_test.pt"
    weights.write_bytes(weights.read_bytes() + b"\0")
    with pytest.raises(ValueError, match="sha256"):
        load_model(card_path)


def test_missing_weights_and_cards_are_refused(saved, tmp_path):
    _, card_path = saved
    (tmp_path / "thigh_test.pt").unlink()
    with pytest.raises(ValueError, match=r"not found: .*thigh_test\.pt"):
        load_model(card_path)
    with pytest.raises(ValueError, match="no model named 'absent'"):
        load_model("absent", model_dir=tmp_path)


def test_architecture_mismatch_is_refused(saved, tmp_path):
    _, card_path = saved
    data = json.loads(card_path.read_text())
    data["arguments"]["base_features"] = 8
    card_path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"thigh_test\.pt do not match architecture 'unet2d'"):
        load_model(card_path)


def test_weights_outside_the_card_folder_are_refused(saved, tmp_path):
    _, card_path = saved
    data = json.loads(card_path.read_text())
    data["weights_file"] = "../elsewhere.pt"
    card_path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="file name next to the card"):
        load_model(card_path)


def test_cards_validate_labels_and_architecture():
    with pytest.raises(ValueError, match="right-side indices"):
        ModelCard(name="bad", architecture="unet2d", arguments={}, region="thigh", labels=[21])
    with pytest.raises(ValueError, match="unknown architecture"):
        ModelCard(name="bad", architecture="vnet", arguments={}, region="thigh", labels=[1])
    with pytest.raises(ValueError, match="unknown model card fields"):
        ModelCard.from_dict({**make_card().to_dict(), "colour": "red"})


def test_save_refuses_a_module_that_does_not_match_the_card(tmp_path):
    other = build_network("unet2d", **{**ARGS, "base_features": 8})
    with pytest.raises(ValueError, match="does not match"):
        save_model(other, make_card(), tmp_path)


def test_half_precision_weights_are_half_the_size_and_load_as_float32(saved, tmp_path):
    net, card_path = saved
    half_path = save_model(net, make_card("thigh_half"), tmp_path / "half", precision="float16")
    stored = torch.load(tmp_path / "half" / "thigh_half.pt", weights_only=True)
    assert {v.dtype for v in stored.values() if v.is_floating_point()} == {torch.float16}
    # a tiny network: the file's fixed overhead keeps the ratio above one half
    assert (tmp_path / "half" / "thigh_half.pt").stat().st_size < 0.7 * (tmp_path / "thigh_test.pt").stat().st_size
    loaded, _ = load_model(half_path)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    x = torch.randn(2, 1, 19, 23)
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x), atol=2e-2, rtol=2e-2)


def test_int8_weights_are_a_quarter_of_the_size_and_load_as_float32(saved, tmp_path):
    net, _ = saved
    wide = build_network("unet2d", **{**ARGS, "base_features": 16})
    card = make_card("thigh_wide")
    card.arguments = {**ARGS, "base_features": 16}
    full = save_model(wide, card, tmp_path / "full")
    small = save_model(wide, card, tmp_path / "int8", precision="int8")
    stored = torch.load(tmp_path / "int8" / "thigh_wide.pt", weights_only=True)
    assert stored["head.weight"].dtype == torch.int8 and stored["head.weight.int8_scale"].dtype == torch.float32
    assert (tmp_path / "int8" / "thigh_wide.pt").stat().st_size < 0.3 * (tmp_path / "full" / "thigh_wide.pt").stat().st_size
    loaded, _ = load_model(small)
    reference, _ = load_model(full)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    for (key, value), original in zip(loaded.state_dict().items(), reference.state_dict().values()):
        if value.is_floating_point() and value.ndim >= 2:  # per-channel max-abs / 127 rounding error
            bound = original.abs().amax(dim=tuple(range(1, value.ndim)), keepdim=True) / 254 + 1e-6
            assert torch.all((value - original).abs() <= bound), key
    with pytest.raises(ValueError, match="precision"):
        save_model(net, make_card(), tmp_path, precision="int4")


def test_every_shipped_model_loads_within_the_size_limit():
    """Shipped weights match their cards' sha256, stay under 5 MB, and every
    region has the four segmentation architectures (3D ones with a patch)."""
    from bids_muscle.seg.zoo import package_model_dir

    cards = list_models()
    names = {c.name for c in cards}
    for region in ("thigh", "calf"):
        assert {f"{region}_{net}" for net in ("unet2d", "unet3d", "hrnet", "transunet", "muscleregion")} <= names
    for card in cards:
        load_model(card.name)
        assert (package_model_dir() / card.weights_file).stat().st_size < 5 * 1024 * 1024, card.name
        if card.architecture == "unet3d":
            assert card.patch_size is not None and len(card.patch_size) == 3
