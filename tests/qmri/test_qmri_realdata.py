"""Quantitative maps on real scans, compared with musclemap's reference outputs.

Data: ``../shared/data`` (see its README); every test skips when absent.
The Dixon tests also draw montages: into a temporary folder, or into the
folder named by ``BIDS_MUSCLE_FIGURES_DIR`` (``docs/figures`` regenerates the
figures of docs/validation.md).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from bids_muscle.qmri.b1 import b1_double_angle
from bids_muscle.qmri.dixon import separate_water_fat
from bids_muscle.qmri.mtr import mtr_percent
from bids_muscle.qmri.se2echo import t2_two_point

nib = pytest.importorskip("nibabel")



@pytest.fixture(scope="module")
def figures(tmp_path_factory) -> Path:
    chosen = os.environ.get("BIDS_MUSCLE_FIGURES_DIR")
    return Path(chosen) if chosen else tmp_path_factory.mktemp("figures")

TE_DIXON_S = (3.45e-3, 4.60e-3, 5.75e-3)


def _load(path: Path):
    img = nib.load(str(path))
    return np.asanyarray(img.dataobj).astype(np.float32), img.affine


def _need(shared_data: Path, folder: str) -> Path:
    path = shared_data / folder
    if not path.is_dir():
        pytest.skip(f"{path} not available")
    return path


def _per_slice(fn, volume):
    return np.stack([fn(volume[:, :, z]) for z in range(volume.shape[2])], axis=-1)


def _largest_components(mask2d, min_voxels):
    lab, n = ndimage.label(mask2d)
    if n == 0:
        return mask2d
    sizes = ndimage.sum(mask2d, lab, np.arange(1, n + 1))
    return np.isin(lab, 1 + np.flatnonzero(sizes >= min_voxels))


def _save_montage(path: Path, panels, title, dpi=72):
    """Small PNG montage: ``panels`` is a list of rows of (image, title, kwargs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = len(panels), len(panels[0])
    aspect = panels[0][0][0].shape[1] / panels[0][0][0].shape[0]
    fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols, 2.3 * rows * aspect + 0.4), squeeze=False)
    for r, row in enumerate(panels):
        for c, (img, name, kw) in enumerate(row):
            ax = axes[r, c]
            im = ax.imshow(np.rot90(img), **kw)
            ax.set_title(name, fontsize=7)
            ax.axis("off")
            cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
            cb.ax.tick_params(labelsize=5)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    assert path.stat().st_size < 300_000


# ---------------------------------------------------------------------------
# Dixon
# ---------------------------------------------------------------------------
def test_ge_thigh_dixon_matches_musclemap(shared_data):
    """GE 3 T thigh: musclemap ran the Glover-Schneider 3-point method on
    magnitude (``-0000``) and phase (``-0001``, milliradians) images; the
    masked phases are in ``reference/`` (the input folder holds only the
    magnitudes, 512x512, of which the reference maps are the 512x256 crop).
    The matching separation is the complex fit with a single-peak fat model
    and the common-phase fat fraction."""
    d = _need(shared_data, "thigh_dixon_ge_masked")
    names = ("40006-ORIG_DIXON_TE_345_TH", "40007-ORIG_DIXON_TE_460_TH", "40008-ORIG_DIXON_TE_575_TH")
    mag = np.stack([_load(d / f"{n}-0000.nii.gz")[0] for n in names], axis=-1)
    phase = np.stack([_load(d / "reference" / f"{n}-0001_m.nii.gz")[0] for n in names], axis=-1) * 1e-3
    mask, in_affine = _load(d / "mask.nii.gz")
    ref, ref_affine = _load(d / "reference" / "fatfraction.nii.gz")
    offset = np.round(np.linalg.solve(in_affine, ref_affine[:, 3])[:3]).astype(int)
    crop = tuple(slice(o, o + n) for o, n in zip(offset, ref.shape))
    signal = (mag * np.exp(1j * phase))[crop]
    mask = mask[crop] > 0
    assert mask.sum() > 40000

    out = separate_water_fat(signal, TE_DIXON_S, 3.0, mask=mask, fat_model="single", ff_method="common_phase")
    diff = np.abs(out["ff_percent"] - ref)
    assert np.median(diff[mask]) <= 1.0
    # The mask also covers a ring of background noise outside the skin
    # (15 % of it is below 10 % of the tissue signal) where both methods
    # return noise, and their field maps differ there; the share test uses
    # tissue away from the skin edge: signal above 15 % of the 99th
    # percentile, eroded by 2 voxels (1.6 mm), 78 % of the mask.
    rms = np.sqrt(np.mean(np.abs(signal) ** 2, axis=-1))
    tissue = _per_slice(lambda s: ndimage.binary_erosion(s, iterations=2), rms > 0.15 * np.percentile(rms[mask], 99))
    region = mask & tissue
    assert region.sum() > 0.7 * mask.sum()
    assert np.median(diff[region]) <= 1.0
    assert np.mean(~(diff[region] <= 20.0)) < 0.005


def _siemens_signal(d: Path):
    series = (("0006", "0007", 345), ("0008", "0009", 460), ("0010", "0011", 575))
    echoes = []
    for mag_id, ph_id, te in series:
        mag, affine = _load(d / f"{mag_id}-Dixon_TE_{te}_th.nii.gz")
        ph, _ = _load(d / f"{ph_id}-Dixon_TE_{te}_th.nii.gz")
        echoes.append(mag * np.exp(1j * (ph - 2048.0) * np.pi / 2048.0))  # 12-bit phase
    return np.stack(echoes, axis=-1).astype(np.complex64), affine


def _thigh_regions(in_phase, voxel_mm):
    """Body, subcutaneous-fat band and deep muscle masks from morphology only."""
    thr = 0.2 * np.percentile(in_phase, 99)
    body = _per_slice(lambda s: _largest_components(
        ndimage.binary_fill_holes(ndimage.binary_opening(s > thr, iterations=2)), 2000), in_phase)
    dist = _per_slice(lambda s: ndimage.distance_transform_edt(s, sampling=voxel_mm), body)
    subcutaneous = body & (dist >= 3.0) & (dist <= 8.0)

    def femur(z):
        sl = in_phase[:, :, z]
        cortex = body[:, :, z] & (sl < 0.35 * np.median(sl[body[:, :, z]])) & (dist[:, :, z] > 15.0)
        return ndimage.binary_dilation(ndimage.binary_fill_holes(ndimage.binary_closing(cortex, iterations=3)),
                                       iterations=5)

    bone = np.stack([femur(z) for z in range(in_phase.shape[2])], axis=-1)
    muscle = body & (dist >= 25.0) & ~bone
    return body, subcutaneous, muscle


def test_siemens_thigh_dixon_plausible_and_swap_free(shared_data, figures):
    d = _need(shared_data, "thigh_dixon_siemens")
    signal, affine = _siemens_signal(d)
    out = separate_water_fat(signal, TE_DIXON_S, 3.0)
    ff = out["ff_percent"]
    in_phase = np.abs(signal[..., 1])
    body, sat, muscle = _thigh_regions(in_phase, float(abs(affine[0, 0])))
    assert np.median(ff[muscle]) < 10.0
    assert np.median(ff[sat]) > 85.0
    # A swap flips whole regions. The subcutaneous band of every leg stays
    # fat in every slice but the last, where the field of view cuts the
    # front of the thighs so that the outer band of the mask is not skin.
    for z in range(ff.shape[2] - 1):
        legs, n_legs = ndimage.label(body[:, :, z])
        assert n_legs == 2
        for leg in range(1, n_legs + 1):
            assert np.median(ff[:, :, z][(legs == leg) & sat[:, :, z]]) > 75.0
    # and the field map jumps by the fat shift (435 Hz) at a swap boundary
    b0 = out["b0_hz"]
    for axis in (0, 1):
        jump = np.abs(np.diff(b0, axis=axis))
        pair = np.take(body, np.arange(body.shape[axis] - 1), axis=axis) & np.take(
            body, np.arange(1, body.shape[axis]), axis=axis)
        assert np.mean(jump[pair] > 217.0) < 0.001
    show = np.where(body, 1.0, np.nan)
    panels = []
    for z in (3, 7):
        panels.append([
            (in_phase[:, :, z], f"|S(4.60 ms)| slice {z}", dict(cmap="gray")),
            (ff[:, :, z] * show[:, :, z], "fat fraction (%)", dict(cmap="magma", vmin=0, vmax=100)),
            (out["b0_hz"][:, :, z] * show[:, :, z], "B0 (Hz)", dict(cmap="RdBu_r", vmin=-300, vmax=300)),
            (out["r2star_per_s"][:, :, z] * show[:, :, z], "R2* (1/s)", dict(cmap="viridis", vmin=0, vmax=150)),
        ])
    _save_montage(figures / "dixon_thigh_siemens.png", panels,
                  "Siemens 3 T thigh, 3-echo complex Dixon (6-peak fat, VARPRO + region growing)", dpi=110)


def test_hip_megre_ismrm17_swap_free(shared_data, figures):
    d = _need(shared_data, "hip_megre_ismrm17")
    data = np.load(d / "17.npy")  # (echo, x, y, slice), complex
    signal = np.moveaxis(data, 0, -1)
    te = (2.87e-3, 6.07e-3, 9.27e-3)
    out = separate_water_fat(signal, te, 1.494, precession_clockwise=True)
    ff, b0 = out["ff_percent"], out["b0_hz"]
    rms = np.sqrt(np.mean(np.abs(signal) ** 2, axis=-1))
    body = _per_slice(lambda s: _largest_components(
        ndimage.binary_fill_holes(ndimage.binary_opening(s, iterations=1)), 1000), rms > 0.15 * np.percentile(rms, 99))
    dist = _per_slice(lambda s: ndimage.distance_transform_edt(s, sampling=1.5), body)
    sat = body & (dist >= 1.5) & (dist <= 6.0)
    r, c = np.mgrid[0:signal.shape[0], 0:signal.shape[1]]
    marrow = (r - 45) ** 2 + (c - 55) ** 2 <= 8 ** 2  # femoral head
    for z in range(ff.shape[2]):
        assert np.median(ff[:, :, z][marrow]) > 75.0
        assert np.median(ff[:, :, z][sat[:, :, z]]) > 70.0
    # swaps show as jumps of the field map: neighbours in tissue differ by
    # less than half the nearest alias (95 Hz here)
    for axis in (0, 1):
        jump = np.abs(np.diff(b0, axis=axis))
        pair = np.take(body, np.arange(body.shape[axis] - 1), axis=axis) & np.take(
            body, np.arange(1, body.shape[axis]), axis=axis)
        assert np.mean(jump[pair] > 47.0) < 0.001
    show = np.where(body, 1.0, np.nan)
    panels = [[
        (np.abs(signal[:, :, z, 0]).T, f"|S(2.87 ms)| slice {z}", dict(cmap="gray")),
        ((ff[:, :, z] * show[:, :, z]).T, "fat fraction (%)", dict(cmap="magma", vmin=0, vmax=100)),
        ((b0[:, :, z] * show[:, :, z]).T, "B0 (Hz)", dict(cmap="RdBu_r", vmin=-500, vmax=500)),
        ((out["r2star_per_s"][:, :, z] * show[:, :, z]).T, "R2* (1/s)", dict(cmap="viridis", vmin=0, vmax=150)),
    ] for z in (1, 2)]
    _save_montage(figures / "dixon_hip_ismrm17.png", panels,
                  "ISMRM 2012 challenge case 17, 1.5 T, 3 echoes (6-peak fat, VARPRO + region growing)")


# ---------------------------------------------------------------------------
# MTR, B1, T2
# ---------------------------------------------------------------------------
def test_mtr_matches_musclemap(shared_data):
    d = _need(shared_data, "thigh_mt")
    m_off, _ = _load(d / "mt_off.nii.gz")
    m_on, _ = _load(d / "mt_on.nii.gz")
    ref, _ = _load(d / "reference" / "mtr.nii.gz")
    thighs = _per_slice(lambda s: ndimage.binary_fill_holes(ndimage.binary_opening(s, iterations=2)),
                        m_off > 0.1 * np.percentile(m_off, 99))
    mtr = mtr_percent(m_off, m_on, mask=thighs)
    defined = thighs & np.isfinite(mtr)
    assert defined.sum() > 0.95 * thighs.sum()
    assert np.median(np.abs(mtr - ref)[defined]) <= 0.5


def test_b1_matches_musclemap(shared_data):
    d = _need(shared_data, "thigh_b1_dam")
    s60, _ = _load(d / "se_fa060.nii.gz")
    s120, _ = _load(d / "se_fa120.nii.gz")
    mask = _load(d / "mask.nii.gz")[0] > 0
    ref, _ = _load(d / "reference" / "b1.nii.gz")  # relative B1 (fraction of 60 degrees)
    b1 = b1_double_angle(s60, s120, nominal_deg=60.0, mask=mask)
    defined = mask & np.isfinite(b1)
    assert defined.sum() > 0.8 * mask.sum()
    assert np.median(np.abs(b1 - ref)[defined]) <= 0.01
    assert 0.8 < np.median(b1[defined]) < 1.2


def test_t2_two_point_matches_musclemap(shared_data):
    d = _need(shared_data, "thigh_t2_se2echo")
    # echoes as musclemap registered them to the Dixon grid (registration is
    # the caller's job); the reference T2 is in ms
    s16, _ = _load(d / "reference" / "t2_te16ms_r.nii.gz")
    s56, _ = _load(d / "reference" / "t2_te56ms_r.nii.gz")
    mask = _load(d / "reference" / "mask.nii.gz")[0] > 0
    ref_ms, _ = _load(d / "reference" / "t2.nii.gz")
    out = t2_two_point(s16, s56, 0.016, 0.056, mask=mask)
    defined = mask & np.isfinite(out["t2_s"])
    assert defined.sum() > 0.95 * mask.sum()
    assert np.median(np.abs(out["t2_s"] * 1000.0 - ref_ms)[defined]) <= 1.0
    assert 0.030 < np.median(out["t2_s"][defined]) < 0.080


def _flirt_voxels(affine, shape):
    """FSL's voxel -> scaled-mm matrix (x flipped for a positive-determinant affine)."""
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    out = np.diag([*zooms, 1.0])
    if np.linalg.det(affine[:3, :3]) > 0:
        out[0, 0], out[0, 3] = -zooms[0], (shape[0] - 1) * zooms[0]
    return out


def test_t2_two_point_through_the_interface_matches_musclemap(shared_data, tmp_path):
    """The app's own path on the raw echoes (two separate files), compared on musclemap's grid.

    musclemap moved both echoes by one transform (first echo -> Dixon, flirt)
    and computed T2 there; put through that transform the app's T2 agrees to
    ~0.2 ms, through the scanner affines alone only to ~2.4 ms: the
    difference is musclemap's registration to the Dixon image. The echoes are
    aligned with each other, so the interface's echo registration is refused.
    """
    from bids_muscle.interfaces.qmaps import TwoPointT2

    d = _need(shared_data, "thigh_t2_se2echo")
    res = TwoPointT2(in_files=[str(d / "t2_te16ms.nii.gz"), str(d / "t2_te56ms.nii.gz")],
                     echo_times=[0.016, 0.056]).run(cwd=str(tmp_path)).outputs
    reg = res.metadata["Registration"]
    assert reg["MaxDisplacementMm"] < 0.5 and not reg["Applied"]
    assert reg["EdgeEnergyAfter"] > reg["EdgeEnergyBefore"]
    t2_img = nib.load(res.t2)
    t2_ms = np.asarray(t2_img.dataobj, np.float32) * 1000.0
    ref_ms, ref_affine = _load(d / "reference" / "t2.nii.gz")
    mask = _load(d / "reference" / "mask.nii.gz")[0] > 0
    mat = np.loadtxt(d / "reference" / "t2_te16ms_xform.mat")

    def median_difference(ref_voxel_to_ours):
        on_ref = ndimage.affine_transform(t2_ms, ref_voxel_to_ours[:3, :3], ref_voxel_to_ours[:3, 3],
                                          output_shape=ref_ms.shape, order=1, cval=np.nan)
        ok = mask & np.isfinite(on_ref)
        assert ok.sum() > 0.85 * mask.sum()
        return float(np.median(np.abs(on_ref - ref_ms)[ok]))

    by_transform = median_difference(np.linalg.inv(
        np.linalg.inv(_flirt_voxels(ref_affine, ref_ms.shape)) @ mat @ _flirt_voxels(t2_img.affine, t2_ms.shape)))
    by_affines = median_difference(np.linalg.inv(t2_img.affine) @ ref_affine)
    assert by_transform <= 0.5
    assert by_affines > 4 * by_transform
