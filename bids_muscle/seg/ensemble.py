"""Segmentation by an ensemble of contrasts and scales, and a per-muscle confidence.

A muscle that is mostly fat is dark on a water image and bright on a fat
image, like the fat around it: a network that sees one contrast loses it
(Hostin et al. 2023 report the drop of Dice with fat infiltration). When a
Dixon pair exists, :func:`segment_ensemble` therefore runs the same
contrast-agnostic network on the water image, the fat image and their sum
(an in-phase-like image where every muscle keeps its outline); a single
image runs at a few model voxel sizes instead (test-time scale
augmentation). The class probabilities of all members are averaged before
the labels are taken.

The spread of the members also says how far the labels can be trusted.
:func:`expected_dice` turns the fused probabilities into the Dice each
muscle would score if the probabilities were calibrated (the soft Dice of
the probabilities with their own labels); networks are over-confident, so
it reads above the real Dice, but it ranks muscles as their real Dice does.
:func:`flag_muscles` marks the muscles unlikely to be right: an expected
Dice below :data:`FLAG_BELOW`, or a volume that differs between the legs by
more than :data:`FLAG_ASYMMETRY` of their mean (a leak into a neighbour or a
lost muscle; a strongly asymmetric disease is flagged too, for a look).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from torch import nn

from bids_muscle.seg.infer import keep_largest_component, segment
from bids_muscle.seg.legs import side_labels
from bids_muscle.seg.zoo import ModelCard

#: Model voxel sizes tried, as factors of the card's (test-time scale augmentation).
DEFAULT_SCALES = (0.9, 1.0, 1.1)
#: Most network passes per segmentation: with three contrasts (a Dixon pair)
#: only the card's own voxel size runs (on the real IDEAL thigh the nine
#: passes of three scales scored 0.771 mean Dice against 0.769 for three).
MAX_MEMBERS = 3
#: Expected Dice under which a muscle is flagged.
FLAG_BELOW = 0.8
#: Relative left/right volume difference above which both sides are flagged.
FLAG_ASYMMETRY = 0.5


def ensemble_contrasts(reference: np.ndarray, fat: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The images an ensemble segments: the reference alone, or, with a
    Dixon fat image on the same grid as a water reference, the water, the
    fat and their sum (in-phase-like)."""
    reference = np.asarray(reference, dtype=np.float32)
    if fat is None:
        return {"reference": reference}
    fat = np.asarray(fat, dtype=np.float32)
    if fat.shape != reference.shape:
        raise ValueError(f"the fat image {fat.shape} and the water image {reference.shape} differ in shape")
    return {"water": reference, "fat": fat, "water+fat": reference + fat}


def ensemble_members(contrasts: Sequence[str], scales: Sequence[float], max_members: int = MAX_MEMBERS) -> list[tuple[str, float]]:
    """The ``(contrast, scale)`` passes of an ensemble: every contrast at every
    scale, or every contrast at scale 1 alone when that would exceed
    ``max_members`` passes."""
    scales = [float(s) for s in scales] or [1.0]
    if len(contrasts) * len(scales) > max_members and len(contrasts) > 1:
        scales = [1.0]
    return [(name, scale) for name in contrasts for scale in scales]


def labels_from_probabilities(probseg: np.ndarray, probseg_labels: Sequence[int], largest_component: bool = True) -> np.ndarray:
    """Label map from per-label probabilities (X, Y, Z, L); background is
    what the labels leave (1 - their sum)."""
    background = 1.0 - probseg.sum(axis=-1, keepdims=True)
    lut = np.concatenate([[0], np.asarray(probseg_labels)]).astype(np.int16)
    dseg = lut[np.argmax(np.concatenate([background, probseg], axis=-1), axis=-1)]
    return keep_largest_component(dseg) if largest_component else dseg


def expected_dice(probseg: np.ndarray, dseg: np.ndarray, probseg_labels: Sequence[int]) -> dict[int, float]:
    """Per label: 2 * sum(p in the label) / (label voxels + sum(p)), the
    Dice of the labels against the probabilities (1 for a certain label, 0
    for an absent one)."""
    out = {}
    for k, label in enumerate(probseg_labels):
        p = probseg[..., k]
        inside = dseg == label
        denominator = np.count_nonzero(inside) + float(p.sum())
        out[int(label)] = float(2.0 * p[inside].sum() / denominator) if inside.any() and denominator > 0 else 0.0
    return out


def flag_muscles(
    confidence: Mapping[int, float],
    volumes: Mapping[int, float],
    region: str,
    below: float = FLAG_BELOW,
    asymmetry: float = FLAG_ASYMMETRY,
) -> dict[int, list[str]]:
    """Reasons a muscle's labels are unlikely to be right (empty list: none)."""
    reasons: dict[int, list[str]] = {int(label): [] for label in confidence}
    for label, value in confidence.items():
        if value < below:
            reasons[int(label)].append(f"expected Dice {value:.2f} < {below:.2f}")
    for label in confidence:
        other = int(side_labels(np.array([label]), region, "left")[0])
        if other == label or other not in confidence:
            continue
        a, b = volumes.get(int(label), 0.0), volumes.get(other, 0.0)
        if a + b > 0 and abs(a - b) / ((a + b) / 2.0) > asymmetry:
            for index in (int(label), other):
                reasons[index].append(f"left and right volumes differ by {100 * abs(a - b) / ((a + b) / 2.0):.0f} %")
    return reasons


def segment_ensemble(
    images: Mapping[str, np.ndarray],
    affine: np.ndarray,
    model: nn.Module,
    card: ModelCard,
    *,
    scales: Sequence[float] = DEFAULT_SCALES,
    num_threads: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Segment with every image of ``images`` (same grid) at every scale of
    the card's voxel size (:func:`ensemble_members`) and fuse the
    probabilities.

    Returns
    -------
    dict
        ``dseg``, ``probseg`` (fused, X, Y, Z, 2K), ``probseg_labels``,
        ``legs`` as :func:`bids_muscle.seg.infer.segment`; ``confidence``:
        expected Dice per label present; ``members``: the
        ``(contrast, scale)`` pairs fused; ``member_dsegs`` (M, X, Y, Z,
        int16): each member's own labels, whose spread gives the
        segmentation part of the per-muscle standard errors
        (:func:`bids_muscle.stats.biomarkers.add_standard_errors`).
    """
    if not images:
        raise ValueError("segment_ensemble needs at least one image")
    report = progress or (lambda message: None)
    members = ensemble_members(list(images), scales)
    total, labels, legs, member_dsegs = None, None, [], []
    for name, scale in members:
        scaled = card if scale == 1.0 else dataclasses.replace(
            card, voxel_size_mm=[None if v is None else v * scale for v in card.voxel_size_mm])
        result = segment(images[name], affine, model, scaled, return_probabilities=True, num_threads=num_threads)
        if total is None:
            total = result["probseg"]
        else:
            total += result["probseg"]
        labels, legs = result["probseg_labels"], result["legs"]
        member_dsegs.append(labels_from_probabilities(result["probseg"], labels).astype(np.int16))
        report(f"segmented the {name} image at scale {scale:g}")
    probseg = total / len(members)
    dseg = labels_from_probabilities(probseg, labels)
    confidence = {label: value for label, value in expected_dice(probseg, dseg, labels).items() if (dseg == label).any()}
    return {"dseg": dseg, "probseg": probseg, "probseg_labels": labels, "legs": legs, "confidence": confidence,
            "members": members, "member_dsegs": np.stack(member_dsegs)}
