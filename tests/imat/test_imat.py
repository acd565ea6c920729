"""IMAT classification: patch encoder, triplet loss, the four methods, metrics, shipped encoders."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from bids_muscle.imat import dcae
from bids_muscle.imat.classify import METHODS, classify_imat
from bids_muscle.imat.metrics import fraction_agreement, imat_agreement, imat_fraction
from bids_muscle.phantom import anatomy, signals
from bids_muscle.qmri.t2 import fit_t2_single, fit_t2_water_fat
from bids_muscle.seg.zoo import package_model_dir
from bids_muscle.stats.agreement import dice


@pytest.fixture(scope="module")
def phantom_slices():
    """Two calf slices with severe infiltration, their fitted maps and the true IMAT."""
    rng = np.random.default_rng([3300, 0])
    truth = anatomy.draw_region("calf", rng, n_slices=2, severity=0.8)
    echoes, te_s = signals.mese_images(truth, rng)
    body = truth.tissue > 0
    water_fat = fit_t2_water_fat(echoes, te_s, mask=body)
    single = fit_t2_single(echoes, te_s, mask=body)
    maps = {"water_t2_s": water_fat["water_t2_s"], "ff_percent": water_fat["ff_percent"],
            "t2_s": single["t2_s"], "pd": single["pd"]}
    return truth, maps


def test_encoder_embedding_is_unit_norm():
    encoder = dcae.PatchEncoder(in_channels=2, embedding_dim=16).eval()
    z = encoder(torch.randn(5, 2, 16, 16))
    assert z.shape == (5, 16)
    np.testing.assert_allclose(z.norm(dim=1).detach().numpy(), 1.0, atol=1e-5)
    model = dcae.PatchAutoencoder(2, 16).eval()
    z, x_hat = model(torch.randn(3, 2, 16, 16))
    assert z.shape == (3, 16) and x_hat.shape == (3, 2, 16, 16)
    with pytest.raises(ValueError, match="patches must have shape"):
        encoder(torch.randn(2, 3, 16, 16))


def test_triplet_loss_hand_made():
    anchor = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    positive = torch.tensor([[0.8, 0.6], [0.0, 1.0]])
    negative = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    # first: 0.4 - 2 + 1 < 0 -> 0; second: 2 - 0 + 1 = 3
    assert float(dcae.triplet_loss(anchor, positive, negative, margin=1.0)) == pytest.approx(1.5)
    assert float(dcae.triplet_loss(anchor, positive, negative, margin=0.0)) == pytest.approx(1.0)


def test_normalise_maps_and_patches():
    region = np.zeros((20, 20, 2), bool)
    region[4:16, 4:16] = True
    ff = np.full(region.shape, 10.0, np.float32)
    ff[8, 8, 1] = 80.0
    t2 = np.full(region.shape, 0.03, np.float32)
    t2[5, 5, 0] = np.nan
    channels = dcae.normalise_maps({"ff_percent": ff, "water_t2_s": t2}, region, ["ff_percent", "water_t2_s"])
    assert channels.shape == (2, 20, 20, 2) and channels.dtype == np.float32
    assert channels[0, 8, 8, 1] == pytest.approx(0.8) and channels[0, 10, 10, 0] == pytest.approx(0.1)
    assert channels[1, 5, 5, 0] == pytest.approx(1.0)  # NaN takes the median, 0.03 / 0.03
    assert np.all(channels[:, ~region] == 0)
    patches = dcae.extract_patches(channels, np.array([[8, 8, 1], [0, 0, 0]]))
    assert patches.shape == (2, 2, 16, 16)
    assert patches[0, 0, 8, 8] == pytest.approx(0.8)  # the voxel sits at (8, 8) of its patch
    assert np.all(patches[1, :, :8, :] == 0)  # beyond the image edge
    with pytest.raises(ValueError, match="missing"):
        dcae.normalise_maps({"ff_percent": ff}, region, ["ff_percent", "pd"])


def test_training_separates_classes():
    rng = np.random.default_rng(0)
    region = np.ones((32, 32, 1), bool)
    weak = ((np.arange(32) // 8) % 2 == 1)[:, None, None] & region  # stripes of fat 8 voxels wide
    ff = (np.where(weak, 85.0, 5.0) + rng.normal(0.0, 2.0, region.shape)).astype(np.float32)
    t2 = np.full(region.shape, 0.03, np.float32)
    channels = dcae.normalise_maps({"ff_percent": ff, "water_t2_s": t2}, region, ["water_t2_s", "ff_percent"])
    volume = dcae.TrainingVolume(channels, region, weak)
    untrained = dcae.PatchEncoder(2, 16)
    before = dcae.class_centroids(untrained, [volume], per_class=200)
    model, history = dcae.train_patch_autoencoder([volume], steps=20, batch_size=32, seed=1)
    assert history["steps"] == 20
    after = dcae.class_centroids(model.encoder, [volume], per_class=200)
    # the triplet loss pushes the class centroids apart, beyond the margin
    assert float(np.sum((after[0] - after[1]) ** 2)) > max(1.0, float(np.sum((before[0] - before[1]) ** 2)))


@pytest.mark.parametrize(("method", "bound"), [("dcae", 0.9), ("kmeans", 0.95), ("threshold", 0.95)])
def test_methods_on_phantom(phantom_slices, method, bound):
    truth, maps = phantom_slices
    region = truth.muscle_region
    imat, probability = classify_imat({k: maps[k] for k in ("water_t2_s", "ff_percent")}, region, method)
    assert imat.dtype == bool and not np.any(imat & ~region)
    assert dice(imat, truth.imat) > bound
    if method == "threshold":
        assert probability is None
    else:
        assert probability.dtype == np.float32 and np.all(probability[~region] == 0)
        assert np.all((probability >= 0) & (probability <= 1))
        np.testing.assert_array_equal(imat[region], probability[region] > 0.5)


@pytest.mark.parametrize(("method", "bound"), [("dcae", 0.95), ("dcae-kmeans", 0.6), ("kmeans", 0.95), ("threshold", 0.95)])
def test_methods_on_fat_blobs(method, bound):
    """Half of the region is fat in smooth blobs: every method, the plain DCAE included, finds it.

    (With IMAT a small share of the region, the reconstruction-only
    embedding splits the region by other patch features and k-means finds
    no IMAT cluster; see docs/validation.md.)
    """
    rng = np.random.default_rng(0)
    shape = (96, 96, 2)
    fat = anatomy.smooth_field(shape, rng, scale_vox=4.0) > 0.0
    maps = {"water_t2_s": (np.where(fat, 0.030, 0.032) + rng.normal(0.0, 0.002, shape)).astype(np.float32),
            "ff_percent": (np.where(fat, 85.0, 5.0) + rng.normal(0.0, 3.0, shape)).astype(np.float32)}
    region = np.zeros(shape, bool)
    region[8:-8, 8:-8] = True
    imat, _ = classify_imat(maps, region, method)
    assert dice(imat, fat & region) > bound


def test_dcae_on_t2_pd_and_2d_and_erosion(phantom_slices):
    truth, maps = phantom_slices
    region = truth.muscle_region
    imat, _ = classify_imat({"t2_s": maps["t2_s"], "pd": maps["pd"]}, region, "dcae", weak_ff_percent=maps["ff_percent"])
    assert dice(imat, truth.imat) > 0.8
    flat = {k: maps[k][..., 0] for k in ("water_t2_s", "ff_percent")}
    imat2d, prob2d = classify_imat(flat, region[..., 0], "dcae")
    assert imat2d.shape == region.shape[:2] and prob2d.shape == region.shape[:2]
    assert dice(imat2d, truth.imat[..., 0]) > 0.8
    eroded, _ = classify_imat({k: maps[k] for k in ("water_t2_s", "ff_percent")}, region, "dcae", erode_voxels=2)
    assert not np.any(eroded & ~region) and eroded.any()


def test_dcae_without_weak_labels_uses_card_centroids(phantom_slices):
    truth, maps = phantom_slices
    imat, _ = classify_imat({"t2_s": maps["t2_s"], "pd": maps["pd"]}, truth.muscle_region, "dcae")
    assert dice(imat, truth.imat) > 0.8


def test_bad_inputs(phantom_slices):
    truth, maps = phantom_slices
    region = truth.muscle_region
    pair = {k: maps[k] for k in ("water_t2_s", "ff_percent")}
    with pytest.raises(ValueError, match="unknown IMAT method"):
        classify_imat(pair, region, "dcaetl")
    with pytest.raises(ValueError, match="empty"):
        classify_imat(pair, np.zeros_like(region), "dcae")
    with pytest.raises(ValueError, match="shape"):
        classify_imat(pair, region[:-1], "dcae")
    with pytest.raises(ValueError, match="shape"):
        classify_imat(pair, region, "dcae", weak_ff_percent=maps["ff_percent"][..., :1])
    with pytest.raises(ValueError, match="needs the maps"):
        classify_imat({"pd": maps["pd"]}, region, "dcae")
    with pytest.raises(ValueError, match="fat fraction"):
        classify_imat({"t2_s": maps["t2_s"], "pd": maps["pd"]}, region, "kmeans")
    with pytest.raises(ValueError, match="fat fraction"):
        classify_imat({"t2_s": maps["t2_s"]}, region, "threshold")
    assert set(METHODS) == {"dcae", "dcae-kmeans", "kmeans", "threshold"}


@pytest.mark.parametrize("name", ["imat_dcae", "imat_ae", "imat_dcae_t2pd", "imat_ae_t2pd"])
def test_shipped_encoders_load(name):
    encoder, card = dcae.load_encoder(name)
    assert card["name"] == name and card["architecture"] == dcae.ARCHITECTURE
    assert len(card["inputs"]) == encoder.in_channels == 2
    assert np.array(card["reference_centroids"]).shape == (2, encoder.dense.out_features)
    assert (package_model_dir() / card["weights_file"]).stat().st_size <= 2 * 1024 * 1024


def test_tampered_encoder_is_refused(tmp_path):
    for suffix in (".json", ".pt"):
        shutil.copy(package_model_dir() / f"imat_dcae{suffix}", tmp_path / f"imat_dcae{suffix}")
    with open(tmp_path / "imat_dcae.pt", "ab") as handle:
        handle.write(b"0")
    with pytest.raises(ValueError, match="sha256"):
        dcae.load_encoder(tmp_path / "imat_dcae.json")
    card = json.loads((tmp_path / "imat_dcae.json").read_text())
    card["architecture"] = "unet2d"
    (tmp_path / "imat_dcae.json").write_text(json.dumps(card))
    with pytest.raises(ValueError, match="architecture"):
        dcae.load_encoder(tmp_path / "imat_dcae.json")
    with pytest.raises(ValueError, match="no IMAT encoder"):
        dcae.load_encoder("imat_missing")


def test_metrics_hand_made():
    region = np.zeros((4, 4, 1), bool)
    region[:, :2] = True  # 8 voxels
    true = np.zeros_like(region)
    true[:2, 0] = True  # 2 IMAT
    pred = np.zeros_like(region)
    pred[:3, 0] = True  # 3 IMAT, 2 correct
    pred[0, 3] = True  # outside the region: ignored
    m = imat_agreement(pred, true, region)
    assert m["imat_dice"] == pytest.approx(2 * 2 / (3 + 2))
    assert m["viable_dice"] == pytest.approx(2 * 5 / (5 + 6))
    assert m["accuracy"] == pytest.approx(7 / 8)
    assert 0 < m["nmi"] < 1 and m["ari"] < 1
    assert imat_agreement(true, true, region)["ari"] == pytest.approx(1.0)
    assert imat_fraction(pred, region) == pytest.approx(3 / 8)
    groups = np.where(region, np.arange(4)[:, None, None] + 1, 0)
    np.testing.assert_allclose(imat_fraction(pred, region, groups), [0.5, 0.5, 0.5, 0.0])
    agreement = fraction_agreement([0.1, 0.2, 0.4], [0.1, 0.2, 0.3])
    assert agreement["bias"] == pytest.approx(0.1 / 3) and agreement["n"] == 3
