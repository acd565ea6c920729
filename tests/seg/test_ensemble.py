"""Ensemble segmentation and per-muscle confidence (bids_muscle.seg.ensemble)."""

import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from scipy.stats import spearmanr

from bids_muscle.phantom import anatomy, signals
from bids_muscle.seg import ensemble
from bids_muscle.seg.zoo import load_model
from bids_muscle.seg.labels import load_label_table
from bids_muscle.stats.biomarkers import add_segmentation_quality, muscle_table

REPO_ROOT = Path(__file__).resolve().parents[2]


def two_labels(shape=(20, 20, 3)):
    dseg = np.zeros(shape, np.int16)
    dseg[2:9, 2:18] = 3
    dseg[11:18, 2:18] = 5
    return dseg


def one_hot(dseg, labels):
    return np.stack([(dseg == k).astype(np.float32) for k in labels], axis=-1)


def test_expected_dice_is_one_for_certain_labels_and_falls_with_spread():
    dseg = two_labels()
    labels = [3, 5]
    certain = one_hot(dseg, labels)
    assert ensemble.expected_dice(certain, dseg, labels) == {3: 1.0, 5: 1.0}
    # blurring one label's probabilities (a disagreeing ensemble) lowers only its expected Dice
    blurred = certain.copy()
    blurred[..., 1] = ndimage.gaussian_filter(certain[..., 1], (2, 2, 0))
    estimate = ensemble.expected_dice(blurred, ensemble.labels_from_probabilities(blurred, labels, False), labels)
    assert estimate[3] == 1.0 and 0.5 < estimate[5] < 0.95
    assert ensemble.expected_dice(certain, np.zeros_like(dseg), labels) == {3: 0.0, 5: 0.0}


def test_labels_from_probabilities_leave_uncertain_voxels_to_the_background():
    dseg = two_labels()
    probs = 0.45 * one_hot(dseg, [3, 5])
    assert not ensemble.labels_from_probabilities(probs, [3, 5]).any()  # background 0.55 wins
    assert np.array_equal(ensemble.labels_from_probabilities(2 * probs, [3, 5]), dseg)


def test_flags_name_low_confidence_and_left_right_asymmetry():
    flags = ensemble.flag_muscles({3: 0.9, 23: 0.95, 5: 0.6, 25: 0.9}, {3: 100.0, 23: 40.0, 5: 50.0, 25: 52.0}, "thigh")
    assert flags[5] == ["expected Dice 0.60 < 0.80"] and flags[25] == []
    assert all("left and right volumes differ by 86 %" in flags[k] for k in (3, 23))


def test_members_are_contrasts_times_scales_within_three_passes():
    assert ensemble.ensemble_members(["reference"], (0.9, 1.0, 1.1)) == [("reference", 0.9), ("reference", 1.0),
                                                                       ("reference", 1.1)]
    assert ensemble.ensemble_members(["water", "fat", "water+fat"], (0.9, 1.0, 1.1)) == [
        ("water", 1.0), ("fat", 1.0), ("water+fat", 1.0)]
    assert ensemble.ensemble_members(["reference"], ()) == [("reference", 1.0)]


def test_ensemble_contrasts_of_a_dixon_pair():
    water, fat = np.ones((4, 4, 2)), np.full((4, 4, 2), 2.0)
    images = ensemble.ensemble_contrasts(water, fat)
    assert list(images) == ["water", "fat", "water+fat"] and np.all(images["water+fat"] == 3.0)
    assert list(ensemble.ensemble_contrasts(water)) == ["reference"]
    with pytest.raises(ValueError, match="differ in shape"):
        ensemble.ensemble_contrasts(water, fat[..., :1])


def test_quality_columns_flag_missing_muscles_and_keep_the_whole_region_unflagged():
    dseg = two_labels()
    table = muscle_table(dseg, (1.0, 1.0, 5.0), load_label_table("thigh"))
    out = add_segmentation_quality(table, {3: 0.9, 5: 0.7}, {3: [], 5: ["expected Dice 0.70 < 0.80"]})
    row = out.set_index("label")
    assert row.loc[3, "seg_flag"] == 0 and row.loc[3, "seg_confidence"] == 0.9
    assert row.loc[5, "seg_flag"] == 1 and "0.70" in row.loc[5, "seg_flag_reason"]
    assert row.loc[1, "seg_flag"] == 1 and row.loc[1, "seg_flag_reason"] == "not found"
    assert row.loc[0, "seg_flag"] == 0 and np.isnan(row.loc[0, "seg_confidence"])


@pytest.mark.slow
def test_ensemble_on_a_phantom_matches_the_truth_and_is_confident():
    rng = np.random.default_rng([2000, 1])
    truth = anatomy.draw_region("calf", rng, n_slices=4)
    model, card = load_model("calf_unet2d")
    result = ensemble.segment_ensemble({"t1w": signals.t1w_image(truth, rng)}, truth.affine, model, card,
                                       scales=(0.9, 1.1), num_threads=1)
    assert result["members"] == [("t1w", 0.9), ("t1w", 1.1)]
    found = [k for k in np.unique(truth.labels) if k > 0]
    dice = [2 * np.count_nonzero((result["dseg"] == k) & (truth.labels == k))
            / (np.count_nonzero(result["dseg"] == k) + np.count_nonzero(truth.labels == k)) for k in found]
    assert np.mean(dice) > 0.75
    assert all(0.5 < result["confidence"][k] <= 1.0 for k in found)


@pytest.mark.slow
def test_real_thigh_ensemble_of_dixon_contrasts_beats_water_and_confidence_ranks_muscles(shared_data):
    """On a real patient thigh (fat-infiltrated posterior muscles), the
    water+fat ensemble beats the water image alone, and the confidence
    ranks the muscles as their Dice against the reference labels does."""
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    import real_seg_tasks

    task = real_seg_tasks.thigh_ideal(shared_data)
    model, card = load_model("thigh_unet3d")
    water, _ = real_seg_tasks.segment_task(task, model, card, contrasts=["water"], scales=(1.0,), num_threads=1)
    fused, _ = real_seg_tasks.segment_task(task, model, card, scales=(1.0,), num_threads=1)
    assert fused["dice"].mean() > water["dice"].mean() + 0.03
    assert fused["dice"].mean() > 0.74
    assert spearmanr(fused["confidence"], fused["dice"])[0] > 0.5
    low = fused[fused["dice"] < 0.7]
    assert len(low) and low["flagged"].mean() >= 0.8
