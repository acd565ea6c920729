"""Model files: a missing, truncated or altered model is refused, named, before any processing."""

from __future__ import annotations

import json
import shutil

import pytest

from bids_muscle.cli.run import main
from bids_muscle.imat import dcae
from bids_muscle.phantom.dataset import generate_dataset
from bids_muscle.seg import zoo


@pytest.fixture(scope="module")
def calf_bids(tmp_path_factory):
    root = generate_dataset(tmp_path_factory.mktemp("models") / "bids", n_participants=1, seed=5, regions=("calf",),
                            n_slices=2)
    shutil.rmtree(root / "derivatives")
    return root


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _alter(path):
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


def _run(calf_bids, tmp_path, *extra):
    return main([str(calf_bids), str(tmp_path / "out"), "participant", "--sloppy", "-w", str(tmp_path / "work"),
                 "--regions", "calf", *extra])


@pytest.mark.parametrize("damage", ["missing", "truncated", "altered"])
def test_a_damaged_shipped_model_is_refused_before_processing(calf_bids, tmp_path, monkeypatch, capsys, damage):
    shipped = tmp_path / "shipped"
    shutil.copytree(zoo.package_model_dir(), shipped)
    monkeypatch.setattr(zoo, "package_model_dir", lambda: shipped)
    monkeypatch.setattr(dcae, "package_model_dir", lambda: shipped)
    victim = shipped / ("imat_dcae.pt" if damage == "missing" else "calf_unet2d.pt")
    {"missing": lambda p: p.unlink(), "truncated": _truncate, "altered": _alter}[damage](victim)
    assert _run(calf_bids, tmp_path) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model check failed" in err[0] and str(victim) in err[0], err
    assert not (tmp_path / "out" / "sub-01").exists()
    assert not (tmp_path / "work" / "sub_01_wf").exists()


@pytest.mark.parametrize("damage", ["truncated weights", "altered weights", "missing weights", "broken card"])
def test_a_damaged_model_dir_model_is_refused_before_processing(calf_bids, tmp_path, capsys, damage):
    models = tmp_path / "models"
    models.mkdir()
    card = zoo.find_card("calf_unet2d")
    shutil.copy(card, models / card.name)
    shutil.copy(card.with_suffix(".pt"), models / "calf_unet2d.pt")
    weights, card_copy = models / "calf_unet2d.pt", models / card.name
    if damage == "truncated weights":
        _truncate(weights)
    elif damage == "altered weights":
        _alter(weights)
    elif damage == "missing weights":
        weights.unlink()
    else:
        card_copy.write_text(json.dumps(json.loads(card_copy.read_text()))[:-10])
    assert _run(calf_bids, tmp_path, "--model-dir", str(models)) == 2
    err = capsys.readouterr().err
    named = card_copy if damage == "broken card" else weights
    assert "model check failed" in err and str(named) in err, err
    assert not (tmp_path / "out" / "sub-01").exists()
