"""Synthesis of training images from label maps (bids_muscle.seg.synth)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from bids_muscle.phantom import anatomy
from bids_muscle.seg import synth
from bids_muscle.seg.infer import muscle_region_mask, segment
from bids_muscle.seg.train import (
    LegVolume,
    dice_ce_loss,
    train_synthetic_model,
    validation_dice,
)
from bids_muscle.seg.zoo import load_model

THIGH_RIGHT = list(range(1, 14))


def ring_leg(n: int = 96, voxel_mm: float = 2.0, hole_mm: float = 30.0) -> np.ndarray:
    """A thigh-like slice: a disc of four muscle sectors around an unlabelled
    central hole (where the femur is), like a label map without bone."""
    ii, jj = np.indices((n, n))
    r = np.hypot(ii - n / 2, jj - n / 2) * voxel_mm
    angle = np.arctan2(jj - n / 2, ii - n / 2)
    classes = np.zeros((n, n), np.int16)
    inside = (r <= 70.0) & (r > hole_mm / 2.0)
    sector = ((angle + np.pi) / (np.pi / 2)).astype(int) % 4
    classes[inside] = np.array([3, 2, 5, 6], np.int16)[sector[inside]]
    return classes


def phantom_legs(region: str = "thigh", seed: int = 7) -> list[synth.LegAnatomy]:
    truth = anatomy.draw_region(region, np.random.default_rng(seed), n_slices=3)
    bone = np.isin(truth.tissue, (anatomy.CORTEX, anatomy.MARROW))
    return synth.leg_anatomies(truth.labels, truth.affine, region, bone_mask=bone, voxel_size_mm=(2.0, 2.0), source="phantom")


def test_complete_tissues_layers_and_femur_in_the_hole():
    classes = ring_leg()
    rng = np.random.default_rng(0)
    tissue = synth.complete_tissues(classes, "thigh", 2.0, rng, subcut_fat_mm=12.0)
    assert np.all(tissue[classes > 0] == synth.MUSCLE)
    # the femur fills the unlabelled centre, marrow inside its cortex
    centre = tissue[44:52, 44:52]
    assert np.all(np.isin(centre, (synth.MARROW, synth.CORTEX))) and (centre == synth.MARROW).any()
    bone = np.isin(tissue, (synth.CORTEX, synth.MARROW))
    radius = np.sqrt(bone.sum() / np.pi) * 2.0
    assert 8.0 <= radius <= 17.0
    # moving outwards along a ray: muscle, subcutaneous fat, skin, background
    ray = tissue[48, 48:]
    order = [t for k, t in enumerate(ray) if k == 0 or ray[k - 1] != t]
    assert order.index(synth.MUSCLE) < order.index(synth.SUBCUT_FAT) < order.index(synth.SKIN) < order.index(synth.BACKGROUND)
    fat_mm = np.count_nonzero(ray == synth.SUBCUT_FAT) * 2.0
    assert 4.0 <= fat_mm <= 22.0


def test_incomplete_sources_mark_unlabelled_tissue_and_ignore_it():
    classes = ring_leg(hole_mm=40.0)
    classes[66:76, 40:54] = 0  # an unlabelled muscle inside the compartment
    leg = synth.LegAnatomy(classes=classes[..., None].repeat(3, axis=2), bone=None, voxel_mm=(2.0, 2.0, 8.0), complete=False, source="test")
    patch = synth.synthesise_patch(leg, 1, "thigh", THIGH_RIGHT, (112, 112), np.random.default_rng(3))
    assert patch.image.shape == patch.classes.shape == (112, 112)
    assert np.isfinite(patch.image).all()
    assert (patch.classes == synth.IGNORE).sum() > 40
    assert set(np.unique(patch.classes)) <= {synth.IGNORE, 0, 2, 3, 5, 6}
    # class = position in the label list + 1: label 5 (vastus medialis) is class 5
    assert np.count_nonzero(patch.classes == 5) == np.count_nonzero(leg.classes[..., 1] == 5)
    # muscle region: muscles and what lies between them, never bone or subcutaneous fat
    assert patch.muscle_region[patch.classes > 0].all()
    assert not patch.muscle_region[np.isin(patch.tissue, (synth.SUBCUT_FAT, synth.SKIN, synth.CORTEX, synth.MARROW, 0))].any()


def test_contrast_families_order_fat_and_muscle():
    classes = ring_leg()
    rng = np.random.default_rng(1)
    tissue = synth.complete_tissues(classes, "thigh", 2.0, rng)
    settings = synth.SynthesisSettings(infiltration_max=0.0)
    for family, fat_brighter in (("t1w", True), ("fat", True), ("t2", True), ("water", False), ("stir", False)):
        for seed in range(3):
            contrast = synth.draw_contrast([2, 3, 5, 6], np.random.default_rng(seed), settings, family)
            image = synth.render_tissues(tissue, classes, contrast, np.random.default_rng(seed), 2.0)
            fat = image[tissue == synth.SUBCUT_FAT].mean()
            muscle = image[tissue == synth.MUSCLE].mean()
            assert (fat > muscle) == fat_brighter, family
    with pytest.raises(ValueError, match="unknown contrast"):
        synth.draw_contrast([2], rng, family="ct")


def test_fat_infiltration_patchy_and_diffuse():
    classes = ring_leg()
    tissue = synth.complete_tissues(classes, "thigh", 2.0, np.random.default_rng(0))
    contrast = synth.draw_contrast([2, 3, 5, 6], np.random.default_rng(0), family="t1w")
    contrast.stds[:] = 0.0
    contrast.plane_weight = 0.0
    contrast.fat_fraction = {2: 0.0, 3: 0.5, 5: 0.3, 6: 0.0}
    contrast.patchy = {2: False, 3: True, 5: False, 6: False}
    image = synth.render_tissues(tissue, classes, contrast, np.random.default_rng(0), 2.0)
    fat = contrast.means[synth.IM_FAT]
    vl = image[(classes == 3) & (tissue == synth.MUSCLE)]
    halfway = (contrast.muscle_means[3] + fat) / 2
    assert abs(np.mean(vl > halfway) - 0.5) < 0.05  # patchy: half of the voxels are fat
    vm = image[(classes == 5) & (tissue == synth.MUSCLE)]
    assert np.allclose(vm, 0.7 * contrast.muscle_means[5] + 0.3 * fat, rtol=1e-4)  # diffuse: mixed
    draws = [synth.draw_contrast(list(range(13)), np.random.default_rng(s)).fat_fraction for s in range(30)]
    values = np.array([v for d in draws for v in d.values()])
    assert values.min() >= 0.0 and values.max() <= 0.8 and (values > 0.3).any()


def test_disease_patterns_and_planes_between_muscles():
    settings = synth.SynthesisSettings(infiltration_max=0.9, pattern_probability=0.4, plane_probability=0.7)
    draws = [synth.draw_contrast(list(range(1, 14)), np.random.default_rng(s), settings) for s in range(200)]
    # off by default, without changing the default draws
    default = synth.draw_contrast(list(range(1, 14)), np.random.default_rng(0))
    assert default.plane_weight == 0.0 and max(default.fat_fraction.values()) <= 0.8
    severe = np.array([np.mean(np.array(list(d.fat_fraction.values())) > 0.5) for d in draws])
    # selective involvement: some images have several muscles above 50 % fat beside lean ones
    patterned = (severe >= 0.2) & (severe <= 0.8)
    assert 0.15 < patterned.mean() < settings.pattern_probability + 0.05
    assert max(max(d.fat_fraction.values()) for d in draws) > 0.85
    # where two muscles touch, the voxels carry the fat (or fascia) of the plane between them
    classes = ring_leg()
    tissue = synth.complete_tissues(classes, "thigh", 2.0, np.random.default_rng(0))
    contrast = synth.draw_contrast([2, 3, 5, 6], np.random.default_rng(0), family="t1w")
    contrast.stds[:] = 0.0
    contrast.fat_fraction = dict.fromkeys([2, 3, 5, 6], 0.0)
    contrast.plane_weight, contrast.plane_tissue = 0.5, synth.IM_FAT
    image = synth.render_tissues(tissue, classes, contrast, np.random.default_rng(0), 2.0)
    borders = synth.muscle_borders(np.where(tissue == synth.MUSCLE, classes, 0))
    assert borders.any() and not borders[classes == 0].any()
    fat = contrast.means[synth.IM_FAT]
    expected = 0.5 * np.vectorize(contrast.muscle_means.get)(classes[borders]) + 0.5 * fat
    assert np.allclose(image[borders], expected, rtol=1e-4)
    inner = (tissue == synth.MUSCLE) & ~borders & (classes == 3)
    assert np.allclose(image[inner], contrast.muscle_means[3], rtol=1e-4)


def test_leg_anatomies_canonical_right_legs_with_bones():
    legs = phantom_legs()
    assert [leg.source for leg in legs] == ["phantom right", "phantom left"]
    for leg in legs:
        assert leg.classes.min() >= 0 and leg.classes.max() <= 13 and leg.bone.any()
        # canonical right leg: vastus lateralis (3) lateral (+x) of vastus medialis (5)
        x = np.indices(leg.classes.shape)[0]
        assert x[leg.classes == 3].mean() > x[leg.classes == 5].mean()
    with pytest.raises(ValueError, match="no muscle labels"):
        synth.leg_anatomies(np.zeros((10, 10, 2)), np.eye(4), "thigh")


def test_synthesis_is_cheap_and_deterministic():
    leg = phantom_legs()[0]
    a = synth.synthesise_patch(leg, 1, "thigh", THIGH_RIGHT, (112, 112), np.random.default_rng(5))
    b = synth.synthesise_patch(leg, 1, "thigh", THIGH_RIGHT, (112, 112), np.random.default_rng(5))
    assert np.array_equal(a.image, b.image) and np.array_equal(a.classes, b.classes)
    assert set(np.unique(a.classes)) == set(range(14))  # complete source: nothing ignored
    image, classes = synth.synthesise_volume(leg, "thigh", THIGH_RIGHT, np.random.default_rng(0), family="stir")
    assert image.shape == classes.shape == leg.classes.shape
    assert np.array_equal(classes > 0, leg.classes > 0)


def test_loss_ignores_unknown_voxels():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 8, 8)
    target = torch.randint(0, 4, (2, 8, 8))
    target[:, :3] = synth.IGNORE
    changed = logits.clone()
    changed[:, :, :3] += 5 * torch.randn(2, 4, 3, 8)
    assert torch.isclose(dice_ce_loss(logits, target, 4), dice_ce_loss(changed, target, 4))
    perfect = torch.nn.functional.one_hot(target.clamp_min(0), 4).movedim(-1, 1).float() * 50
    assert dice_ce_loss(perfect, target, 4) < 0.01


def test_train_synthetic_model_writes_a_loadable_card(tmp_path):
    legs = phantom_legs()
    val = []
    for k, leg in enumerate(legs):
        image, classes = synth.synthesise_volume(leg, "thigh", THIGH_RIGHT, np.random.default_rng(k), family="t1w")
        val.append(LegVolume(image=image, classes=classes, group=k))
    result = train_synthetic_model(
        [legs], "thigh", "unet2d", tmp_path, label_indices=THIGH_RIGHT, val_legs=val, arguments={"base_features": 4},
        patch_size=(64, 64), pool_size=8, epochs=1, steps_per_epoch=2, batch_size=2, num_threads=1,
    )
    model, card = load_model(result.card_path)
    assert card.labels == THIGH_RIGHT and card.validation["output"] == "muscles"
    assert 0.0 <= result.best_val_dice <= 1.0
    region = train_synthetic_model(
        [legs], "thigh", "unet2d", tmp_path, name="thigh_muscleregion", label_indices=THIGH_RIGHT, target="muscleregion",
        val_legs=[LegVolume(v.image, (v.classes != 0).astype(np.int64), v.group) for v in val], arguments={"base_features": 4},
        patch_size=(64, 64), pool_size=8, epochs=1, steps_per_epoch=1, batch_size=2, num_threads=1,
    )
    card = json.loads(region.card_path.read_text())
    assert card["labels"] == [1] and card["arguments"]["n_classes"] == 2 and card["validation"]["output"] == "muscleregion"
    truth = anatomy.draw_region("thigh", np.random.default_rng(9), n_slices=2)
    region_model, region_card = load_model(region.card_path)
    mask = muscle_region_mask(truth.pd, truth.affine, region_model, region_card, num_threads=1)
    assert mask.dtype == bool and mask.shape == truth.labels.shape
    with pytest.raises(ValueError, match="not a muscle-region model"):
        muscle_region_mask(truth.pd, truth.affine, model, card=load_model(result.card_path)[1])
    assert validation_dice(model, val, 2, 14) == pytest.approx(result.best_val_dice, abs=1e-6)
    with pytest.raises(ValueError, match="patch of 3 sizes"):
        train_synthetic_model([legs], "thigh", "unet3d", tmp_path, label_indices=THIGH_RIGHT, val_legs=val, patch_size=(64, 64))


def test_synthesise_block_keeps_the_anatomy_and_ignores_slices_past_the_leg():
    leg = phantom_legs()[0]
    block = synth.synthesise_block(leg, -1, 4, 1, "thigh", THIGH_RIGHT, (112, 112), np.random.default_rng(3))
    again = synth.synthesise_block(leg, -1, 4, 1, "thigh", THIGH_RIGHT, (112, 112), np.random.default_rng(3))
    assert np.array_equal(block.image, again.image)
    assert block.image.shape == block.classes.shape == block.tissue.shape == (112, 112, 4)
    assert np.all(block.classes[..., 0] == synth.IGNORE) and not block.muscle_region[..., 0].any()
    for k in range(3):  # the leg fits in the patch: every muscle voxel of every slice is there
        counts = np.bincount(block.classes[..., k + 1][block.classes[..., k + 1] > 0], minlength=14)
        assert np.array_equal(counts[1:], [np.sum(leg.classes[..., k] == i) for i in THIGH_RIGHT])
    # one draw of the missing tissues for the whole block: the same fat thickness on every slice
    fat = [np.sum(block.tissue[..., k] == synth.SUBCUT_FAT) for k in range(1, 4)]
    assert max(fat) < 1.5 * min(fat)


def test_degrade_blurs_blocks_in_plane_only():
    quiet = synth.SynthesisSettings(noise_fraction=(0.0, 0.0), bias_strength=(0.0, 0.0), psf_sigma_vox=(1.0, 1.0),
                                    downsample_probability=1.0)
    block = np.zeros((40, 40, 5), np.float32)
    block[15:25, 15:25, 2] = 1.0
    out = synth.degrade(block, np.random.default_rng(0), quiet)
    assert out.shape == block.shape
    assert np.abs(out[..., [0, 1, 3, 4]]).max() < 1e-6 and out[..., 2].max() > 0.5
    assert out[12:28, 12:28, 2].sum() == pytest.approx(block.sum(), rel=0.1)


def test_pool_draws_3d_blocks_and_ignores_unlabelled_real_slices():
    from bids_muscle.seg.train import SyntheticPool

    rng = np.random.default_rng(1)
    classes = np.zeros((70, 70, 3), np.int64)
    classes[20:50, 20:50, :2] = 4  # slice 2 carries no labels
    real = LegVolume(image=(classes > 0).astype(np.float32) * 0.8 + 0.1, classes=classes, group=0)
    pool = SyntheticPool([[real]], [1.0], "thigh", THIGH_RIGHT, (64, 64, 4), 6, rng)
    assert tuple(pool.images.shape) == (6, 1, 64, 64, 4)
    for block in pool.classes.numpy():
        for k in range(4):
            assert (block[..., k] == 4).sum() == 900 or np.all(block[..., k] == synth.IGNORE)
    synthetic = SyntheticPool([phantom_legs()], [1.0], "thigh", THIGH_RIGHT, (64, 64, 4), 3, rng)
    assert tuple(synthetic.classes.shape) == (3, 64, 64, 4) and (synthetic.classes > 0).any()


def test_unet2d_weights_start_a_unet3d_as_the_2d_network_slice_by_slice():
    from bids_muscle.seg.nets import build_network
    from bids_muscle.seg.train import load_matching_weights

    torch.manual_seed(0)
    flat = build_network("unet2d", in_channels=1, n_classes=5, base_features=4).eval()
    deep = build_network("unet3d", in_channels=1, n_classes=5, base_features=4)
    load_matching_weights(deep, flat.state_dict())
    deep.eval()
    x = torch.randn(1, 1, 48, 48)
    with torch.no_grad():
        expected = flat(x)
        got = deep(x[..., None].repeat(1, 1, 1, 1, 8))
    assert torch.allclose(got, expected[..., None].expand_as(got), atol=1e-4)


def test_train_synthetic_unet3d_writes_a_half_precision_card_that_segments(tmp_path):
    legs = phantom_legs()
    image, classes = synth.synthesise_volume(legs[0], "thigh", THIGH_RIGHT, np.random.default_rng(0), family="t1w")
    result = train_synthetic_model(
        [legs], "thigh", "unet3d", tmp_path, label_indices=THIGH_RIGHT, val_legs=[LegVolume(image, classes, 0)],
        arguments={"base_features": 4}, patch_size=(48, 48, 4), pool_size=2, epochs=1, steps_per_epoch=1, batch_size=1,
        num_threads=1, precision="float16", inference_patch=(64, 64, 8),
    )
    card = json.loads(result.card_path.read_text())
    assert card["patch_size"] == [64, 64, 8] and card["voxel_size_mm"][2] is None
    state = torch.load(tmp_path / card["weights_file"])
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    model, model_card = load_model(result.card_path)
    truth = anatomy.draw_region("thigh", np.random.default_rng(9), n_slices=5)
    dseg = segment(truth.pd, truth.affine, model, model_card, num_threads=1)["dseg"]
    assert dseg.shape == truth.labels.shape


def test_real_label_maps_map_to_the_right_muscles(shared_data):
    """Anatomical check of the label tables used for training: in every
    canonical leg the vastus lateralis lies lateral of the vastus medialis and
    the rectus femoris anterior of the adductor magnus (Huashan); the
    gastrocnemius medialis lies medial of the lateralis and the tibialis
    anterior anterior of the soleus (QMRITools calf)."""
    huashan = {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 6, 7: 9, 8: 10, 9: 12, 10: 13, 11: 11}
    image = nib.load(str(shared_data / "thigh_labels_huashan" / "Training__T1__THIGH_003_0002.nii.gz"))
    legs = synth.leg_anatomies(np.asarray(image.dataobj), image.affine, "thigh", huashan, complete=False)
    assert len(legs) == 2
    for leg in legs:
        x, y = np.indices(leg.classes.shape)[:2]
        assert x[leg.classes == 3].mean() > x[leg.classes == 5].mean()
        assert y[leg.classes == 2].mean() > y[leg.classes == 6].mean()
        assert set(np.unique(leg.classes)) == {0, 1, 2, 3, 4, 5, 6, 9, 10, 11, 12, 13}
    calf = {13: 41, 14: 41, 15: 42, 16: 42, 17: 43, 18: 43, 19: 44, 20: 44, 21: 46, 22: 46, 23: 47, 24: 47, 25: 45, 26: 45}
    labels = nib.load(str(shared_data / "calf_mese_philips" / "labels.nii.gz"))
    affine = nib.load(str(shared_data / "calf_mese_philips" / "DTIdata.nii.gz")).affine
    legs = synth.leg_anatomies(np.asarray(labels.dataobj), affine, "calf", calf, voxel_size_mm=(1.5, 1.5), complete=False)
    assert len(legs) == 2
    for leg in legs:
        x, y = np.indices(leg.classes.shape)[:2]
        assert x[leg.classes == 42].mean() > x[leg.classes == 41].mean()
        assert y[leg.classes == 44].mean() > y[leg.classes == 43].mean()
        assert x[leg.classes == 46].mean() > x[leg.classes == 44].mean()  # peroneus lateral


def test_mark_unlabelled_ignores_gaps_inside_the_fascia_only():
    classes = np.zeros((60, 60, 2), np.int64)
    classes[10:30, 10:50, 0] = 1
    classes[32:50, 10:50, 0] = 2  # a 2-voxel (4 mm) cleft between two muscles
    marked = synth.mark_unlabelled(classes, voxel_mm=2.0, closing_mm=6.0)
    assert np.all(marked[30:32, 12:48, 0] == synth.IGNORE)
    assert np.all(marked[..., 0][classes[..., 0] > 0] == classes[..., 0][classes[..., 0] > 0])
    assert np.all(marked[:8, :, 0] == 0) and np.all(marked[..., 1] == 0)


def test_pool_mixes_real_labelled_legs_with_synthesis():
    from bids_muscle.seg.train import SyntheticPool

    rng = np.random.default_rng(0)
    classes = np.zeros((70, 70, 3), np.int64)
    classes[20:50, 20:50] = 4
    classes[30:40, 30:40, 1] = synth.IGNORE
    real = LegVolume(image=(classes > 0).astype(np.float32) * 0.8 + 0.1, classes=classes, group=0)
    pool = SyntheticPool([phantom_legs(), [real]], [0.0001, 1.0], "thigh", THIGH_RIGHT, (64, 64), 6, rng)
    assert set(np.unique(pool.classes.numpy())) <= {synth.IGNORE, 0, 4}
    assert (pool.classes == 4).sum(dim=(1, 2)).min() >= 700  # the muscle square stays in view
    with pytest.raises(ValueError, match="muscles"):
        SyntheticPool([[real]], [1.0], "thigh", THIGH_RIGHT, (64, 64), 2, rng, target="muscleregion")
