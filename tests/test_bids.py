import json
import os
import shutil

import numpy as np
import pytest

from bids_muscle import bids
from bids_muscle.phantom.dataset import generate_dataset


def test_build_name_orders_entities():
    name = bids.build_name({"desc": "water", "acq": "thigh", "ses": "1", "sub": "01"}, "T2map")
    assert name == "sub-01_ses-1_acq-thigh_desc-water_T2map.nii.gz"
    assert bids.build_name({"sub": "01", "ses": None, "part": "mag", "echo": 2}, "MEGRE") == "sub-01_echo-2_part-mag_MEGRE.nii.gz"


def test_atomic_write_replaces_without_leftovers(tmp_path):
    target = tmp_path / "a" / "x.json"
    bids.write_json_atomic(target, {"a": 1})
    bids.write_json_atomic(target, {"a": np.float32(2.5)})
    assert json.loads(target.read_text()) == {"a": 2.5}
    assert [p.name for p in target.parent.iterdir()] == ["x.json"]


def test_derivative_image_has_sidecar_with_sources(tmp_path):
    path = bids.write_derivative_image(
        tmp_path, {"sub": "01", "acq": "calf", "desc": "mese"}, "FFmap", np.zeros((2, 2, 2), np.float32), np.eye(4),
        ["bids:raw:sub-01/anat/x.nii.gz"], {"Units": "percent"},
    )
    assert path == tmp_path / "sub-01/anat/sub-01_acq-calf_desc-mese_FFmap.nii.gz"
    meta = json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())
    assert meta["Sources"] == ["bids:raw:sub-01/anat/x.nii.gz"] and meta["Units"] == "percent"


def test_check_dataset_messages(tmp_path):
    with pytest.raises(bids.InputError, match="not a BIDS dataset"):
        bids.check_dataset(tmp_path)
    (tmp_path / "dataset_description.json").write_text("{")
    with pytest.raises(bids.InputError, match="invalid JSON"):
        bids.check_dataset(tmp_path)


@pytest.fixture(scope="module")
def small_phantom(tmp_path_factory):
    return generate_dataset(tmp_path_factory.mktemp("small") / "bids", n_participants=1, seed=1, regions=("calf",), n_slices=3)


def _copy(src, tmp_path):
    dst = tmp_path / "bids"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("derivatives"))
    return dst


def test_collect_inputs_sorts_echoes_and_reads_metadata(small_phantom):
    layout = bids.load_layout(small_phantom)
    (rin,) = bids.collect_inputs(layout, "01", None)
    assert rin.region == "calf"
    assert len(rin.mese.files) == 17 and rin.mese.echo_times_s == sorted(rin.mese.echo_times_s)
    assert rin.mese.files[1].name == "sub-01_acq-calf_echo-2_MESE.nii.gz"
    assert rin.megre_mag.echo_times_s == rin.megre_phase.echo_times_s
    assert rin.field_strength_t == 3.0 and rin.refocusing_flip_angle_deg == 180.0
    assert rin.mt_on and rin.mt_off and rin.anatomical_reference == rin.t1w
    assert bids.collect_inputs(layout, "01", None, regions=("thigh",)) == []


def test_missing_echo_time_names_the_file(small_phantom, tmp_path):
    root = _copy(small_phantom, tmp_path)
    sidecar = root / "sub-01/anat/sub-01_acq-calf_echo-3_MESE.json"
    meta = json.loads(sidecar.read_text())
    del meta["EchoTime"]
    sidecar.write_text(json.dumps(meta))
    with pytest.raises(bids.InputError, match=r"echo-3_MESE.nii.gz: EchoTime missing"):
        bids.collect_inputs(bids.load_layout(root), "01", None)


def test_echoes_of_different_shapes_are_refused(small_phantom, tmp_path):
    import nibabel as nb

    root = _copy(small_phantom, tmp_path)
    echo = root / "sub-01/anat/sub-01_acq-calf_echo-5_MESE.nii.gz"
    img = nb.load(echo)
    nb.Nifti1Image(np.asarray(img.dataobj)[:-2], img.affine).to_filename(echo)
    with pytest.raises(bids.InputError, match="different shapes"):
        bids.collect_inputs(bids.load_layout(root), "01", None)


def test_echo_times_in_milliseconds_are_refused(small_phantom, tmp_path):
    root = _copy(small_phantom, tmp_path)
    for sidecar in root.glob("sub-01/anat/*_MESE.json"):
        meta = json.loads(sidecar.read_text())
        meta["EchoTime"] *= 1000
        sidecar.write_text(json.dumps(meta))
    with pytest.raises(bids.InputError, match="milliseconds"):
        bids.collect_inputs(bids.load_layout(root), "01", None)


def test_unknown_participant_label(small_phantom):
    with pytest.raises(bids.InputError, match="not found: 99"):
        bids.participants_and_sessions(bids.load_layout(small_phantom), ["sub-99"], None)


def test_layout_does_not_write_into_the_dataset(small_phantom):
    before = sorted((p, p.stat().st_mtime_ns) for p in small_phantom.rglob("*"))
    bids.collect_inputs(bids.load_layout(small_phantom), "01", None)
    assert sorted((p, p.stat().st_mtime_ns) for p in small_phantom.rglob("*")) == before
    assert os.access(small_phantom, os.R_OK)


def test_files_without_acq_are_routed_by_the_classifier(small_phantom, tmp_path):
    root = _copy(small_phantom, tmp_path)
    for path in root.glob("sub-01/*/*_acq-calf_*"):
        path.rename(path.with_name(path.name.replace("_acq-calf", "")))
    layout = bids.load_layout(root)
    with pytest.raises(bids.InputError, match="without acq-<region> and several regions"):
        bids.collect_inputs(layout, "01", None)
    (rin,) = bids.collect_inputs(layout, "01", None, regions=("calf",))
    assert rin.region == "calf" and rin.region_probabilities is None
    seen = []

    def classify(path):
        seen.append(path)
        return "calf", {"thigh": 0.1, "calf": 0.9}

    (rin,) = bids.collect_inputs(layout, "01", None, classify=classify)
    assert seen == [rin.anatomical_reference] and rin.region == "calf" and rin.region_probabilities["calf"] == 0.9
    assert rin.entities["acq"] == "calf" and len(rin.mese.files) == 17
    assert bids.collect_inputs(layout, "01", None, regions=("thigh", "calf"),
                               classify=lambda path: ("thigh", {"thigh": 1.0, "calf": 0.0}))[0].region == "thigh"


def _write_anat(root, name, like, datatype="anat", meta=None):
    """A copy of image ``like`` (same grid) named ``name`` with a small sidecar."""
    folder = root / "sub-01" / datatype
    folder.mkdir(exist_ok=True)
    shutil.copy(like, folder / name)
    (folder / name.replace(".nii.gz", ".json")).write_text(json.dumps(meta or {"EchoTime": 0.02}))
    return folder / name


def test_pdw_and_t2w_are_anatomical_references_after_t1w_and_dixon(small_phantom, tmp_path):
    root = _copy(small_phantom, tmp_path)
    anat = root / "sub-01/anat"
    t1w = anat / "sub-01_acq-calf_T1w.nii.gz"
    pdw = _write_anat(root, "sub-01_acq-calf_PDw.nii.gz", t1w)
    t2w = _write_anat(root, "sub-01_acq-calf_T2w.nii.gz", t1w)
    (rin,) = bids.collect_inputs(bids.load_layout(root), "01", None)
    assert (rin.pdw, rin.t2w) == (pdw, t2w) and rin.anatomical_reference == t1w
    assert pdw in rin.all_files() and t2w in rin.all_files()
    t1w.unlink()
    (rin,) = bids.collect_inputs(bids.load_layout(root), "01", None)
    assert rin.anatomical_reference == pdw  # before T2w and before the first MESE echo
    pdw.unlink()
    (rin,) = bids.collect_inputs(bids.load_layout(root), "01", None)
    assert rin.anatomical_reference == t2w
    for path in list(anat.glob("*")):
        if "_T2w." not in path.name:
            path.unlink()
    (rin,) = bids.collect_inputs(bids.load_layout(root), "01", None)  # a T2w alone is a participant
    assert rin.anatomical_reference == t2w and rin.mese is None


def test_a_double_angle_pair_alone_is_a_participant_without_reference(small_phantom, tmp_path):
    root = _copy(small_phantom, tmp_path)
    t1w = root / "sub-01/anat/sub-01_acq-calf_T1w.nii.gz"
    for k, angle in ((1, 60), (2, 120)):
        _write_anat(root, f"sub-01_acq-calf_flip-{k}_TB1DAM.nii.gz", t1w, "fmap", {"FlipAngle": angle})
    shutil.rmtree(root / "sub-01/anat")
    (rin,) = bids.collect_inputs(bids.load_layout(root), "01", None)
    assert rin.anatomical_reference is None and [m["FlipAngle"] for m in rin.b1_dam.metadata] == [60, 120]
    assert rin.b1_prior == ("dam", rin.b1_dam.files)
    # without acq-, the region classifier looks at the alpha image
    for path in root.glob("sub-01/fmap/*"):
        path.rename(path.with_name(path.name.replace("_acq-calf", "")))
    seen = []
    (rin,) = bids.collect_inputs(bids.load_layout(root), "01", None,
                                 classify=lambda p: (seen.append(p), ("calf", {"thigh": 0.2, "calf": 0.8}))[1])
    assert seen == [rin.b1_dam.files[0]] and rin.region == "calf"


def test_a_b1_map_of_the_dataset_is_the_prior_before_the_double_angle_pair(small_phantom, tmp_path):
    root = _copy(small_phantom, tmp_path)
    t1w = root / "sub-01/anat/sub-01_acq-calf_T1w.nii.gz"
    for k, angle in ((1, 60), (2, 120)):
        _write_anat(root, f"sub-01_acq-calf_flip-{k}_TB1DAM.nii.gz", t1w, "fmap", {"FlipAngle": angle})
    (rin,) = bids.collect_inputs(bids.load_layout(root), "01", None)
    assert rin.b1_prior[0] == "dam"
    tb1map = _write_anat(root, "sub-01_acq-calf_TB1map.nii.gz", t1w, "fmap", {"Units": "percent"})
    (rin,) = bids.collect_inputs(bids.load_layout(root), "01", None)
    assert rin.b1_prior == ("tb1map", [tb1map]) and rin.tb1map_units == "percent"
    shutil.rmtree(root / "sub-01/anat")
    for path in root.glob("sub-01/fmap/*TB1DAM*"):
        path.unlink()
    assert bids.collect_inputs(bids.load_layout(root), "01", None) == []  # a B1 map alone gives nothing to compute
