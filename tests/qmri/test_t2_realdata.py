"""T2 fits on real multi-echo spin echo scans (skipped without ../shared/data).

Tissue masks come from the echo decay itself, independently of the fits:
muscle decays fast (echo 9 below 0.3 of echo 2), subcutaneous fat slowly
(above 0.6); both are eroded in-plane to avoid partial volume.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from bids_muscle.qmri.t2 import fit_t2_monoexp, fit_t2_single, fit_t2_water_fat


def _tissue_masks(echoes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    first = echoes[..., 0]
    foreground = first > 0.1 * np.percentile(first, 99)
    decay = echoes[..., 8] / np.maximum(echoes[..., 1], 1.0)
    structure = np.ones((3, 3, 1), bool)
    muscle = ndimage.binary_erosion(foreground & (decay < 0.3), structure)
    fat = ndimage.binary_erosion(foreground & (decay > 0.6), structure)
    return foreground, muscle, fat


def load_calf_mese(
    folder: Path, slices: slice
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Philips calf MESE: echoes (160, 160, n, 17), scanner T2 map (ms), TE (s).

    The file is stored as (160, 160, 13, 18) but holds 234 images: with the
    last two axes flattened in Fortran order, the first 221 are 17 echoes x
    13 slices (echo fastest) and the last 13 the scanner's T2 map.
    """
    import nibabel as nib

    data = np.asarray(nib.load(folder / "T2data.nii.gz").dataobj, dtype=np.float32)
    images = data.reshape(data.shape[0], data.shape[1], -1, order="F")
    echoes = images[..., :221].reshape(data.shape[0], data.shape[1], 13, 17)
    return (
        echoes[:, :, slices],
        images[..., 221:][:, :, slices],
        0.0076 * np.arange(1, 18),
    )


def load_thigh_mese(
    folder: Path, slice_indices: list[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Siemens thigh MESE DICOM: echoes (192, 384, n, 17) sorted by slice position and TE (s)."""
    import pydicom

    headers = {
        path: pydicom.dcmread(path, stop_before_pixels=True)
        for path in sorted(folder.glob("*.dcm"))
    }

    def position(ds) -> float:
        orientation = np.asarray(ds.ImageOrientationPatient, dtype=float)
        normal = np.cross(orientation[:3], orientation[3:])
        return float(np.dot(normal, np.asarray(ds.ImagePositionPatient, dtype=float)))

    positions = sorted({round(position(ds), 3) for ds in headers.values()})
    echo_times = sorted({float(ds.EchoTime) for ds in headers.values()})
    wanted = [positions[i] for i in slice_indices]
    first = next(iter(headers.values()))
    volume = np.zeros(
        (first.Rows, first.Columns, len(wanted), len(echo_times)), np.float32
    )
    for path, ds in headers.items():
        z = round(position(ds), 3)
        if z in wanted:
            volume[:, :, wanted.index(z), echo_times.index(float(ds.EchoTime))] = (
                pydicom.dcmread(path).pixel_array
            )
    return volume, np.asarray(echo_times) / 1000.0


@pytest.fixture(scope="module")
def calf(shared_data):
    folder = shared_data / "calf_mese_philips"
    if not folder.is_dir():
        pytest.skip("calf_mese_philips not available")
    echoes, scanner_t2_ms, te_s = load_calf_mese(folder, slice(5, 8))
    foreground, muscle, fat = _tissue_masks(echoes)
    fit = fit_t2_water_fat(echoes, te_s, mask=foreground)
    return echoes, scanner_t2_ms, te_s, foreground, muscle, fat, fit


def test_calf_water_t2_and_fat_fraction(calf):
    _, _, _, _, muscle, fat, fit = calf
    assert muscle.sum() > 1000 and fat.sum() > 30
    water_t2 = np.nanmedian(fit["water_t2_s"][muscle])
    assert 0.025 <= water_t2 <= 0.045
    assert np.nanmedian(fit["ff_percent"][muscle]) < 15.0
    assert np.nanmedian(fit["ff_percent"][fat]) > 80.0
    assert 0.7 <= np.nanmedian(fit["b1"][muscle]) <= 1.1
    assert np.mean(np.isfinite(fit["water_t2_s"][muscle])) > 0.95


def test_calf_agreement_with_scanner_t2_map(calf):
    echoes, scanner_t2_ms, te_s, foreground, muscle, _, _ = calf
    valid = foreground & (scanner_t2_ms > 0) & (scanner_t2_ms < 200)
    # the scanner map is a mono-exponential fit of all echoes
    mono = (
        fit_t2_monoexp(echoes, te_s, mask=foreground, drop_first=False)["t2_s"] * 1000.0
    )
    both = valid & np.isfinite(mono)
    assert np.corrcoef(mono[both], scanner_t2_ms[both])[0, 1] > 0.98
    assert np.median(np.abs(mono[both] / scanner_t2_ms[both] - 1.0)) < 0.03
    # EPG removes the stimulated-echo bias: lower T2 in muscle, same ranking
    epg = fit_t2_single(echoes, te_s, mask=foreground)["t2_s"] * 1000.0
    both = valid & np.isfinite(epg)
    assert np.corrcoef(epg[both], scanner_t2_ms[both])[0, 1] > 0.95
    in_muscle = both & muscle
    ratio = np.median(epg[in_muscle] / scanner_t2_ms[in_muscle])
    assert 0.65 < ratio < 0.95


def test_thigh_siemens_dicom(shared_data):
    folder = shared_data / "thigh_mese_siemens_dicom"
    if not folder.is_dir():
        pytest.skip("thigh_mese_siemens_dicom not available")
    echoes, te_s = load_thigh_mese(folder, [3])
    echoes = echoes[:, :192]  # one leg keeps the test short
    np.testing.assert_allclose(te_s, 0.0109 * np.arange(1, 18), rtol=1e-3)
    foreground, muscle, fat = _tissue_masks(echoes)
    assert muscle.sum() > 3000
    fit = fit_t2_water_fat(echoes, te_s, mask=foreground)
    assert 0.025 <= np.nanmedian(fit["water_t2_s"][muscle]) <= 0.045
    assert np.nanmedian(fit["ff_percent"][muscle]) < 15.0
    assert np.nanmedian(fit["ff_percent"][fat]) > 60.0
    epg = fit_t2_single(echoes, te_s, mask=muscle)["t2_s"]
    mono = fit_t2_monoexp(echoes, te_s, mask=muscle)["t2_s"]
    assert np.nanmedian(epg) < np.nanmedian(mono)
