"""Smoke training on the digital phantom, then inference with the new model through the command line."""

import json
import subprocess
import sys

import numpy as np
import pytest

from bids_muscle.phantom import anatomy, signals
from bids_muscle.phantom.dataset import generate_dataset
from bids_muscle.seg.infer import segment
from bids_muscle.seg.train import Augmentation, train_model
from bids_muscle.seg.zoo import load_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def phantom_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("models")
    images, labels, affines = [], [], []
    for k in range(6):
        rng = np.random.default_rng([3000, k])
        truth = anatomy.draw_region("calf", rng, n_slices=4)
        images.append(signals.t1w_image(truth, rng))
        labels.append(truth.labels)
        affines.append(truth.affine)
    # a fixed number of steps (not a time limit) keeps the result independent of the machine's load
    train_model(images, labels, affines, "calf", "unet2d", out, arguments={"base_features": 8},
                voxel_size_mm=(2.0, 2.0, None), epochs=20, steps_per_epoch=15, batch_size=8, patience=20,
                learning_rate=3e-3, augmentation=Augmentation(enabled=False), seed=0, num_threads=2)
    return out


def test_phantom_model_beats_chance(phantom_model):
    model, card = load_model("calf_unet2d", phantom_model)
    rng = np.random.default_rng([4000, 0])
    truth = anatomy.draw_region("calf", rng, n_slices=4)
    dseg = segment(signals.t1w_image(truth, rng), truth.affine, model, card)["dseg"]
    present = np.unique(truth.labels[truth.labels > 0])
    dice = [2 * np.sum((truth.labels == v) & (dseg == v)) / (np.sum(truth.labels == v) + np.sum(dseg == v)) for v in present]
    assert np.mean(dice) > 0.5


def test_new_model_runs_through_the_cli(phantom_model, tmp_path):
    bids_dir = generate_dataset(tmp_path / "bids", n_participants=1, seed=9, regions=("calf",), n_slices=3)
    proc = subprocess.run([sys.executable, "-m", "bids_muscle.cli.run", str(bids_dir), str(tmp_path / "out"), "participant",
                           "--sloppy", "--networks", "unet2d", "--model-dir", str(phantom_model), "-w", str(tmp_path / "work")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    sidecar = json.loads((tmp_path / "out/sub-01/anat/sub-01_acq-calf_desc-unet2d_dseg.json").read_text())
    # the user's model replaces the packaged one of the same name
    assert sidecar["Model"]["SHA256"] == load_model("calf_unet2d", phantom_model)[1].sha256
    assert (tmp_path / "out/sub-01/anat/sub-01_acq-calf_biomarkers.tsv").is_file()
