"""Classify muscle-region voxels into viable muscle and IMAT (Amer et al. 2022, stage 2).

Four methods behind :func:`classify_imat`:

``dcae`` (default)
    Patches around every region voxel go through the shipped encoder
    trained with the triplet loss on weak labels (:mod:`bids_muscle.imat.dcae`);
    k-means with two clusters runs on this participant's embeddings,
    started from the mean embedding of the weak viable and weak IMAT voxels,
    and each cluster takes the majority weak label of its voxels.
``dcae-kmeans``
    The same with the shipped auto-encoder trained on reconstruction only
    (the "DCAE + k-means" baseline of the paper).
``kmeans``
    k-means with two clusters on the normalised map values of each voxel
    (the paper's intensity baseline), clusters named the same way.
``threshold``
    Fat fraction above ``cut_percent`` (:func:`bids_muscle.imat.region.imat_threshold`).

The weak label of a voxel is its fat fraction above ``cut_percent``: the
``weak_ff_percent`` map when given (e.g. Dixon), else the ``ff_percent``
map of the two-component MESE fit. Without any fat fraction the encoder
methods name the clusters by the class centroids stored in the encoder
card. The soft IMAT probability of the clustering methods is
``d_v**2 / (d_v**2 + d_i**2)`` with ``d_v`` and ``d_i`` the distances to the
viable and IMAT centroids: 0.5 on the decision boundary, 1 at the IMAT
centroid.

Boundary handling (section 2.4.1): with ``erode_voxels > 0`` only the
voxels of the region eroded in-plane by a square of that half-width are
classified, and the removed rim takes the class and probability of the
nearest classified voxel of its slice (the dilation back). With
``erode_voxels=0`` every region voxel is classified from its own patch;
the encoders are trained on rim patches too, so they do not form a cluster
of their own.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from sklearn.cluster import KMeans

from bids_muscle.imat import dcae
from bids_muscle.imat.region import imat_threshold

METHODS = ("dcae", "dcae-kmeans", "kmeans", "threshold")

#: Input map pairs in order of preference and the shipped encoders for them
#: (triplet-trained, reconstruction-only).
INPUT_PAIRS: tuple[tuple[tuple[str, str], str, str], ...] = (
    (("water_t2_s", "ff_percent"), "imat_dcae", "imat_ae"),
    (("t2_s", "pd"), "imat_dcae_t2pd", "imat_ae_t2pd"),
)

EncoderArg = str | Path | tuple[dcae.PatchEncoder, dict[str, Any]] | None


def _input_pair(maps: Mapping[str, np.ndarray]) -> tuple[tuple[str, str], str, str]:
    for names, triplet_model, plain_model in INPUT_PAIRS:
        if all(name in maps for name in names):
            return names, triplet_model, plain_model
    wanted = " or ".join(" + ".join(names) for names, _, _ in INPUT_PAIRS)
    raise ValueError(f"IMAT classification needs the maps {wanted}; given {sorted(maps)}")


def _encoder_for(method: str, maps: Mapping[str, np.ndarray], encoder: EncoderArg) -> tuple[dcae.PatchEncoder, dict[str, Any]]:
    if isinstance(encoder, tuple):
        return encoder
    if encoder is None:
        _, triplet_model, plain_model = _input_pair(maps)
        encoder = triplet_model if method == "dcae" else plain_model
    return dcae.load_encoder(encoder)


def _square_erosion(region: np.ndarray, half_width: int) -> np.ndarray:
    """In-plane erosion by a (2h+1)^2 square; slices that would vanish keep all their voxels."""
    structure = np.ones((2 * half_width + 1, 2 * half_width + 1, 1), bool)
    eroded = ndimage.binary_erosion(region, structure=structure, border_value=0)
    empty = ~eroded.any(axis=(0, 1))
    eroded[..., empty] = region[..., empty]
    return eroded


def _fill_from_nearest(values: np.ndarray, known: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Copy to every region voxel the value of the nearest ``known`` voxel of the same slice."""
    out = values.copy()
    for z in np.flatnonzero((region & ~known).any(axis=(0, 1))):
        _, (ix, iy) = ndimage.distance_transform_edt(~known[..., z], return_indices=True)
        rim = region[..., z] & ~known[..., z]
        out[..., z][rim] = values[..., z][ix[rim], iy[rim]]
    return out


def _cluster(
    features: np.ndarray,
    weak: np.ndarray | None,
    reference: np.ndarray | None,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Two-cluster k-means; returns (IMAT decision, IMAT probability) per row.

    The start is the mean feature of the weak viable and weak IMAT rows
    (or ``reference`` when either class is missing), so a small IMAT class
    is not lost to a split of the large viable one.
    """
    if weak is not None and weak.any() and (~weak).any():
        init = np.stack([features[~weak].mean(axis=0), features[weak].mean(axis=0)])
    elif reference is not None:
        init = np.asarray(reference, dtype=features.dtype)
    else:
        init = "k-means++"
    if len(features) < 2:
        assign = np.zeros(len(features), int)
        centroids = features[:1].repeat(2, axis=0) if len(features) else np.zeros((2, features.shape[1]))
    else:
        km = KMeans(n_clusters=2, init=init, n_init=1, random_state=seed).fit(features)
        assign, centroids = km.labels_, km.cluster_centers_
    if weak is not None:
        # majority weak label of each cluster (an empty cluster is viable)
        is_imat = np.array([bool(np.mean(weak[assign == c]) > 0.5) if np.any(assign == c) else False for c in (0, 1)])
    else:
        to_ref = ((centroids[:, None, :] - np.asarray(reference)[None, :, :]) ** 2).sum(axis=-1)
        is_imat = to_ref[:, 1] < to_ref[:, 0]
    decision = is_imat[assign]
    if is_imat.all() or not is_imat.any():
        return decision, np.full(len(features), float(is_imat[0]), np.float32)
    d2 = ((features[:, None, :] - centroids[None, :, :]) ** 2).sum(axis=-1)
    d_imat, d_viable = d2[:, int(np.flatnonzero(is_imat)[0])], d2[:, int(np.flatnonzero(~is_imat)[0])]
    probability = d_viable / np.maximum(d_viable + d_imat, 1e-12)
    return decision, probability.astype(np.float32)


def classify_imat(
    maps: Mapping[str, np.ndarray],
    region_mask: np.ndarray,
    method: str = "dcae",
    weak_ff_percent: np.ndarray | None = None,
    encoder: EncoderArg = None,
    cut_percent: float = 50.0,
    erode_voxels: int = 0,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray | None]:
    """IMAT mask and IMAT probability of the muscle-region voxels.

    Parameters
    ----------
    maps : mapping of str to ndarray, shape (X, Y) or (X, Y, Z)
        Co-registered quantitative maps keyed by name: ``water_t2_s`` and
        ``ff_percent`` (two-component MESE fit), or ``t2_s`` and ``pd``
        (single-component fit). Slices run along the last axis; patches
        are in-plane. The first complete pair is used; ``threshold`` only
        needs a fat fraction.
    region_mask : ndarray of bool, same shape
        Muscle region (inside the fascia, without bone).
    method : {'dcae', 'dcae-kmeans', 'kmeans', 'threshold'}
    weak_ff_percent : ndarray, same shape, optional
        Fat fraction (percent) for the weak labels and the threshold,
        e.g. from Dixon; default ``maps['ff_percent']``.
    encoder : str, Path or (PatchEncoder, card), optional
        Encoder name or card path (default: the shipped encoder for the
        map pair and method), or a loaded encoder with its card.
    cut_percent : float
        Fat fraction above which a voxel is weakly (or, for
        ``threshold``, finally) IMAT.
    erode_voxels : int
        In-plane half-width of the boundary erosion (0: none; the paper's
        16 x 16 kernel is 8).
    seed : int
        Seed of k-means.

    Returns
    -------
    imat : ndarray of bool
        IMAT voxels (always inside the region).
    probability : ndarray of float32 or None
        Soft IMAT assignment in [0, 1] inside the region, 0 outside;
        None for ``threshold``.

    Raises
    ------
    ValueError
        Unknown method, empty region, shapes that differ, missing maps or
        no fat fraction where one is needed.
    """
    if method not in METHODS:
        raise ValueError(f"unknown IMAT method {method!r}; expected one of {METHODS}")
    region = np.asarray(region_mask)
    if region.ndim not in (2, 3):
        raise ValueError(f"muscle region must be 2D or 3D, got shape {region.shape}")
    region = region.astype(bool)
    if not region.any():
        raise ValueError("muscle region mask is empty")
    for name, values in maps.items():
        if np.shape(values) != region.shape:
            raise ValueError(f"map {name!r} has shape {np.shape(values)}, the muscle region {region.shape}")
    if weak_ff_percent is not None and np.shape(weak_ff_percent) != region.shape:
        raise ValueError(f"weak fat fraction has shape {np.shape(weak_ff_percent)}, the muscle region {region.shape}")
    if int(erode_voxels) < 0:
        raise ValueError(f"erode_voxels must be >= 0, got {erode_voxels}")
    ff = weak_ff_percent if weak_ff_percent is not None else maps.get("ff_percent")
    if method == "threshold":
        if ff is None:
            raise ValueError("the threshold method needs a fat fraction (maps['ff_percent'] or weak_ff_percent)")
        return imat_threshold(ff, region, cut_percent), None
    flat = region.ndim == 2
    if flat:
        region = region[..., None]
        maps = {name: np.asarray(values)[..., None] for name, values in maps.items()}
        ff = None if ff is None else np.asarray(ff)[..., None]
    weak_map = None if ff is None else imat_threshold(ff, region, cut_percent)

    if method == "kmeans":
        names, _, _ = _input_pair(maps)
        if weak_map is None:
            raise ValueError("the kmeans method needs a fat fraction to name its clusters (maps['ff_percent'] or weak_ff_percent)")
        channels = dcae.normalise_maps(maps, region, names)
        centres = region
        features = channels[:, centres].T
        reference = None
    else:
        net, card = _encoder_for(method, maps, encoder)
        channels = dcae.normalise_maps(maps, region, card["inputs"])
        centres = _square_erosion(region, int(erode_voxels)) if erode_voxels else region
        features = dcae.embed(net, channels, np.argwhere(centres))
        reference = np.asarray(card["reference_centroids"], np.float32)
    weak = None if weak_map is None else weak_map[centres]
    decision, probability = _cluster(features, weak, reference, seed)

    imat = np.zeros(region.shape, bool)
    prob = np.zeros(region.shape, np.float32)
    imat[centres] = decision
    prob[centres] = probability
    if erode_voxels and method != "kmeans":
        imat = _fill_from_nearest(imat, centres, region)
        prob = _fill_from_nearest(prob, centres, region)
    if flat:
        imat, prob = imat[..., 0], prob[..., 0]
    return imat, prob
