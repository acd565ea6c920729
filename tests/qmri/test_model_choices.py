"""The MESE model choices a user can set reach the fit and its sidecar."""

import nibabel as nb
import numpy as np
import pytest

from bids_muscle.interfaces.qmaps import FitMESE
from bids_muscle.qmri.t2 import simulate_mese

TE = np.arange(1, 18) * 0.010


@pytest.fixture(scope="module")
def mese_file(tmp_path_factory):
    """An 8 x 8 x 2 muscle block of the default model: water T2 35 ms, 10 % fat, B1 0.9."""
    shape = (8, 8, 2)
    signal = simulate_mese(np.full(shape, 1000.0), np.full(shape, 10.0), np.full(shape, 0.035), np.full(shape, 0.9), TE)
    path = tmp_path_factory.mktemp("mese") / "mese.nii.gz"
    nb.Nifti1Image(signal.astype(np.float32), np.diag([1.5, 1.5, 8.0, 1.0])).to_filename(path)
    return path


def _fit(mese_file, tmp_path, **choices):
    tmp_path.mkdir(parents=True, exist_ok=True)
    node = FitMESE(in_file=str(mese_file), echo_times=list(TE), denoise="none", **choices)
    result = node.run(cwd=str(tmp_path))
    water_t2 = np.asarray(nb.load(result.outputs.water_t2).dataobj)
    return float(np.median(water_t2)) * 1000.0, result.outputs.water_fat_metadata


def test_default_choices_recover_their_own_model_and_say_so(mese_file, tmp_path):
    t2_ms, meta = _fit(mese_file, tmp_path)
    assert t2_ms == pytest.approx(35.0, abs=0.5)
    assert meta["FatT2"] == pytest.approx(0.14)
    assert meta["SliceProfileModel"]["RefocusingWidthRatio"] == 1.0


def test_an_ideal_slice_and_another_fat_t2_change_the_fit_and_the_sidecar(mese_file, tmp_path):
    default_ms, _ = _fit(mese_file, tmp_path / "a")
    ideal_ms, meta = _fit(mese_file, tmp_path / "b", refocus_width=0.0, fat_t2=0.151)
    assert meta["SliceProfileModel"] == "ideal slice" and meta["SliceProfile"] == "none"
    assert meta["FatT2"] == pytest.approx(0.151)
    # an ideal slice misreads the stimulated echoes of a real profile as longer T2 (docs/validation.md: +4 ms)
    assert ideal_ms > default_ms + 1.0
