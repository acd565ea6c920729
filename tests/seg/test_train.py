"""Training, fine-tuning and the training command line on synthetic legs."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from bids_muscle.cli.train import main
from bids_muscle.seg.infer import classify_region, segment
from bids_muscle.seg.train import (
    Augmentation,
    augment_batch,
    dice_ce_loss,
    find_training_pairs,
    train_model,
    train_region_classifier,
)
from bids_muscle.seg.zoo import load_model

RIGHT = (1, 2, 3, 5)
LEFT = (21, 22, 23, 25)
SECTORS = np.deg2rad([-100.0, -10.0, 70.0, 150.0])


def centred(affine, shape):
    affine = affine.copy()
    affine[:3, 3] = -affine[:3, :3] @ ((np.array(shape) - 1) / 2.0)
    return affine


def random_legs(shape, affine, rng, n_bones=1, uniform_muscle=False):
    """Two elliptic legs (right leg at world x > 0) with four muscle sectors
    of distinct intensity (or one intensity), a fat layer, dark bones and
    noise; size, position, sector borders and intensity scale vary with
    ``rng``."""
    ijk = np.indices(shape, dtype=np.float64).reshape(3, -1)
    x, y, _ = (c.reshape(shape) for c in affine[:3, :3] @ ijk + affine[:3, 3:4])
    image = np.zeros(shape, np.float32)
    labels = np.zeros(shape, np.int16)
    levels = np.array([0.25, 0.45, 0.65, 0.8]) + rng.uniform(-0.03, 0.03, 4)
    if uniform_muscle:
        levels[:] = levels.mean()
    for labs, lateral in ((RIGHT, 1.0), (LEFT, -1.0)):
        cx, cy = lateral * rng.uniform(50, 60), rng.uniform(-5, 5)
        u = lateral * (x - cx) / rng.uniform(40, 48)
        v = (y - cy) / rng.uniform(36, 44)
        r = np.hypot(u, v)
        image[r <= 1.0] = 1.0
        compartment = r <= rng.uniform(0.75, 0.85)
        bones = [(0.1, 0.1, 0.15), (0.45, -0.35, 0.15)][:n_bones]
        bone = np.zeros(shape, bool)
        for bu, bv, radius in bones:
            bone |= np.hypot(u - bu, v - bv) < radius
        sector = np.searchsorted(SECTORS + rng.uniform(-0.1, 0.1, 4), np.arctan2(v, u)) % 4
        muscle = compartment & ~bone
        labels[muscle] = np.array(labs, np.int16)[sector[muscle]]
        image[muscle] = levels[sector[muscle]]
        image[compartment & bone] = 0.05
    image += 0.03 * rng.standard_normal(shape).astype(np.float32)
    return np.abs(image) * rng.uniform(500, 2000), labels


def training_set(n, seed):
    rng = np.random.default_rng(seed)
    shape = (160, 72, 5)
    images, labels, affines = [], [], []
    for k in range(n):
        affine = centred(np.diag([-1.5 if k % 2 else 1.5, 1.5, 6.0, 1.0]), shape)
        image, label = random_legs(shape, affine, rng)
        images.append(image)
        labels.append(label)
        affines.append(affine)
    return images, labels, affines


def dice(a, b, index):
    return 2 * np.sum((a == index) & (b == index)) / (np.sum(a == index) + np.sum(b == index))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("models")
    images, labels, affines = training_set(3, seed=0)
    records = []
    result = train_model(
        images,
        labels,
        affines,
        "thigh",
        "unet2d",
        out,
        name="thigh_smoke",
        arguments={"base_features": 8, "depth": 3},
        voxel_size_mm=[2.0, 2.0, None],
        epochs=15,
        steps_per_epoch=10,
        batch_size=8,
        seed=0,
        patience=15,
        num_threads=1,
        progress=records.append,
    )
    return result, records


def test_smoke_training_learns_and_segments_an_unseen_grid(trained):
    result, records = trained
    assert [r["epoch"] for r in records] == list(range(1, len(records) + 1))
    assert result.best_val_dice > 0.5
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    model, card = load_model(result.card_path)
    assert card.labels == list(RIGHT) and card.validation["val_dice"] == pytest.approx(result.best_val_dice, abs=1e-4)
    shape = (96, 192, 4)
    affine = centred(np.diag([1.25, -1.25, 5.0, 1.0])[:, [1, 0, 2, 3]], shape)
    image, truth = random_legs(shape, affine, np.random.default_rng(99))
    dseg = segment(image, affine, model, card, num_threads=1)["dseg"]
    scores = [dice(dseg, truth, i) for i in RIGHT + LEFT]
    assert min(scores) > 0.6 and np.mean(scores) > 0.8, scores
    assert set(np.unique(dseg)) <= {0, *RIGHT, *LEFT}


def test_fine_tuning_starts_from_the_given_weights(trained, tmp_path):
    result, _ = trained
    images, labels, affines = training_set(2, seed=1)
    tuned = train_model(
        images, labels, affines, "thigh", "unet2d", tmp_path,
        name="tuned", label_indices=[1, 2, 3], epochs=1, steps_per_epoch=0,
        init_from=result.card_path, augmentation=Augmentation(enabled=False), num_threads=1,
    )
    base, _ = load_model(result.card_path)
    model, card = load_model(tuned.card_path)
    assert card.arguments["base_features"] == 8 and card.voxel_size_mm == [2.0, 2.0, None]
    assert card.n_classes == 4
    base_state, state = base.state_dict(), model.state_dict()
    for key, value in state.items():
        if key.startswith("head."):
            assert value.shape[0] == 4
        else:
            torch.testing.assert_close(value, base_state[key])


def test_training_is_deterministic_for_a_seed(tmp_path):
    images, labels, affines = training_set(2, seed=2)
    digests = []
    for run, seed in enumerate((5, 5, 6)):
        result = train_model(
            images, labels, affines, "thigh", "hrnet", tmp_path / str(run),
            arguments={"base_features": 4, "n_branches": 2}, voxel_size_mm=[3.0, 3.0, None],
            epochs=1, steps_per_epoch=2, batch_size=2, seed=seed, num_threads=1,
        )
        digests.append(result.card.sha256)
    assert digests[0] == digests[1] != digests[2]


def test_unet3d_trains_with_patches_and_infers_with_a_sliding_window(tmp_path):
    images, labels, affines = training_set(2, seed=3)
    result = train_model(
        images, labels, affines, "thigh", "unet3d", tmp_path,
        arguments={"base_features": 4, "depth": 2, "inplane_levels": 1}, voxel_size_mm=[3.0, 3.0, None],
        patch_size=(16, 16, 4), epochs=1, steps_per_epoch=2, batch_size=2, num_threads=1,
    )
    model, card = load_model(result.card_path)
    assert card.patch_size == [16, 16, 4]
    out = segment(images[0], affines[0], model, card, return_probabilities=True, num_threads=1)
    assert out["dseg"].shape == images[0].shape
    assert out["probseg"].shape == images[0].shape + (8,)
    assert set(np.unique(out["dseg"])) <= {0, *RIGHT, *LEFT}


def test_augmentation_keeps_labels_on_their_voxels():
    """With intensity changes only, labels must not move; with the spatial
    part, image and labels must move together (the augmented image still
    predicts the augmented labels by intensity)."""
    generator = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    image, labels = random_legs((96, 72, 1), centred(np.diag([2.0, 2.0, 5.0, 1.0]), (96, 72, 1)), rng)
    classes = np.searchsorted(np.array(RIGHT), labels[..., 0] % 20)
    classes[labels[..., 0] == 0] = 0
    classes = np.where(labels[..., 0] > 0, classes + 1, 0)
    x = torch.from_numpy((image[..., 0] / image.max())[None, None].astype(np.float32)).repeat(4, 1, 1, 1)
    y = torch.from_numpy(classes[None].astype(np.int64)).repeat(4, 1, 1)
    settings = Augmentation(noise_std=0.0, bias_strength=0.0, gamma_range=(1.0, 1.0), contrast_range=(1.0, 1.0))
    xa, ya = augment_batch(x, y, settings, generator)
    assert not torch.equal(ya, y)
    for k in range(1, 5):
        inside = ya == k
        core = torch.nn.functional.max_pool2d((~inside).float()[:, None], 5, 1, 2)[:, 0] == 0
        level = x[:, 0][y == k].median()
        assert torch.allclose(xa[:, 0][core], level.expand_as(xa[:, 0][core]), atol=0.15)


def test_dice_ce_loss_is_small_for_confident_correct_predictions():
    target = torch.randint(0, 3, (2, 8, 8))
    perfect = torch.nn.functional.one_hot(target, 3).movedim(-1, 1).float() * 20.0
    wrong = torch.nn.functional.one_hot((target + 1) % 3, 3).movedim(-1, 1).float() * 20.0
    assert float(dice_ce_loss(perfect, target, 3)) < 1e-3
    assert float(dice_ce_loss(wrong, target, 3)) > 10.0


def test_region_classifier_routes_held_out_images(tmp_path):
    rng = np.random.default_rng(4)
    shape = (120, 60, 6)
    affine = centred(np.diag([2.0, 2.0, 6.0, 1.0]), shape)
    images, regions = [], []
    for k in range(12):
        region = ("thigh", "calf")[k % 2]
        calf = region == "calf"
        image, _ = random_legs(shape, affine, rng, n_bones=2 if calf else 1, uniform_muscle=calf)
        images.append(image)
        regions.append(region)
    result = train_region_classifier(
        images[:6], [affine] * 6, regions[:6], tmp_path,
        arguments={"base_features": 4, "input_size": 64, "n_blocks": 4}, epochs=30, steps_per_epoch=5,
        batch_size=8, val_fraction=0.34, patience=30, num_threads=1,
    )
    model, card = load_model(result.card_path)
    assert card.classes == ["thigh", "calf"]
    predicted = [classify_region(image, affine, model, card, num_threads=1)[0] for image in images[6:]]
    assert predicted == regions[6:]


def test_cli_trains_from_bids_derivatives(tmp_path, capsys):
    images, labels, affines = training_set(2, seed=5)
    raw, derivatives = tmp_path / "raw", tmp_path / "derivatives"
    for k, (image, label, affine) in enumerate(zip(images, labels, affines)):
        (raw / f"sub-{k:02d}" / "anat").mkdir(parents=True)
        (derivatives / f"sub-{k:02d}" / "anat").mkdir(parents=True)
        nib.save(nib.Nifti1Image(image, affine), raw / f"sub-{k:02d}" / "anat" / f"sub-{k:02d}_acq-thigh_T1w.nii.gz")
        nib.save(
            nib.Nifti1Image(label, affine),
            derivatives / f"sub-{k:02d}" / "anat" / f"sub-{k:02d}_acq-thigh_desc-manual_dseg.nii.gz",
        )
    pairs = find_training_pairs([derivatives], image_suffix="T1w", image_root=raw)
    assert [(i.name, lab.name) for i, lab in pairs] == [
        (f"sub-{k:02d}_acq-thigh_T1w.nii.gz", f"sub-{k:02d}_acq-thigh_desc-manual_dseg.nii.gz") for k in range(2)
    ]
    out = tmp_path / "models"
    code = main([
        str(out), "--region", "thigh", "--labels", str(derivatives), "--images-dir", str(raw),
        "--base-features", "4", "--voxel-size", "3", "3", "--epochs", "1", "--steps-per-epoch", "1",
        "--batch-size", "2", "--name", "cli_model", "--threads", "1",
    ])
    assert code == 0
    card = json.loads((out / "cli_model.json").read_text())
    assert card["labels"] == list(RIGHT) and len(card["training_data"]) == 2
    assert "epoch    1" in capsys.readouterr().out
    assert main([str(out), "--region", "thigh", "--labels", str(tmp_path / "raw")]) == 2
