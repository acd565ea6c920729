"""The command line: flags, exit codes and bad input (nothing written into the input)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bids_muscle.cli.run import build_parser, main, parse_config
from bids_muscle.phantom.dataset import generate_dataset

FLAGS = (
    "--participant-label", "--session-label", "--session-id", "--bids-filter-file", "--work-dir", "--nprocs",
    "--omp-nthreads", "--mem-gb", "--skip-bids-validation", "--plugin", "--plugin-settings",
    "--stop-on-first-crash", "--version", "--sloppy", "--regions",
)


def test_help_documents_every_flag():
    text = build_parser().format_help()
    for flag in FLAGS:
        assert flag in text, flag


def test_version_and_bad_arguments_exit_codes(capsys):
    with pytest.raises(SystemExit) as ex:
        main(["--version"])
    assert ex.value.code == 0
    with pytest.raises(SystemExit) as ex:
        main(["in", "out", "nonsense"])
    assert ex.value.code == 2


def test_config_from_argv(tmp_path):
    filt = tmp_path / "filter.json"
    filt.write_text(json.dumps({"mese": {"run": 1}}))
    cfg = parse_config([str(tmp_path / "in"), str(tmp_path / "out"), "participant", "--participant-label", "sub-01", "02",
                        "--session-id", "ses-1", "--bids-filter-file", str(filt), "--nprocs", "3", "--regions", "calf",
                        "--plugin", "Linear", "--sloppy"])
    assert cfg.participant_label == ("01", "02") and cfg.session_label == "1"
    assert cfg.bids_filters == {"mese": {"run": 1}} and cfg.regions == ("calf",) and cfg.sloppy
    assert cfg.plugin_args() == {}
    assert parse_config([str(tmp_path / "in"), str(tmp_path / "o"), "group"]).plugin_args()["n_procs"] >= 1


def test_output_inside_input_top_level_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as ex:
        parse_config([str(tmp_path), str(tmp_path / "out"), "participant"])
    assert ex.value.code == 2


def _snapshot(root: Path):
    return sorted((p.relative_to(root).as_posix(), p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*"))


@pytest.fixture(scope="module")
def tiny_bids(tmp_path_factory):
    root = generate_dataset(tmp_path_factory.mktemp("tiny") / "bids", n_participants=1, seed=3, regions=("calf",), n_slices=2)
    shutil.rmtree(root / "derivatives")
    return root


def _run(args, tmp_path):
    env = dict(os.environ)
    proc = subprocess.run([sys.executable, "-m", "bids_muscle.cli.run", *map(str, args), "-w", str(tmp_path / "work")],
                          capture_output=True, text=True, env=env, timeout=600)
    return proc.returncode, proc.stdout + proc.stderr


def test_non_bids_folder(tmp_path):
    (tmp_path / "notbids").mkdir()
    code, out = _run([tmp_path / "notbids", tmp_path / "out", "participant"], tmp_path)
    assert code == 2
    assert "notbids: not a BIDS dataset (no dataset_description.json)" in out
    assert list((tmp_path / "notbids").iterdir()) == []


def test_unknown_participant(tiny_bids, tmp_path):
    before = _snapshot(tiny_bids)
    code, out = _run([tiny_bids, tmp_path / "out", "participant", "--participant-label", "42"], tmp_path)
    assert code == 2 and "participant label(s) not found: 42" in out
    assert _snapshot(tiny_bids) == before


def test_missing_echo_time(tiny_bids, tmp_path):
    root = tmp_path / "bids"
    shutil.copytree(tiny_bids, root)
    sidecar = root / "sub-01/anat/sub-01_acq-calf_echo-1_MESE.json"
    meta = json.loads(sidecar.read_text())
    del meta["EchoTime"]
    sidecar.write_text(json.dumps(meta))
    before = _snapshot(root)
    code, out = _run([root, tmp_path / "out", "participant", "--sloppy"], tmp_path)
    assert code == 2
    assert "sub-01_acq-calf_echo-1_MESE.nii.gz: EchoTime missing from the sidecar" in out
    assert _snapshot(root) == before


def test_read_only_input_is_processed_and_left_untouched(tiny_bids, tmp_path):
    root = tmp_path / "bids"
    shutil.copytree(tiny_bids, root)
    for p in [root, *root.rglob("*")]:
        p.chmod(0o555 if p.is_dir() else 0o444)
    before = _snapshot(root)
    try:
        code, out = _run([root, tmp_path / "out", "participant", "--sloppy", "--nprocs", "2"], tmp_path)
        assert code == 0, out
        assert _snapshot(root) == before
        assert (tmp_path / "out" / "sub-01" / "anat" / "sub-01_acq-calf_desc-water_T2map.nii.gz").is_file()
    finally:
        for p in [root, *root.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)


def test_unwritable_output_folder(tiny_bids, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, out = _run([tiny_bids, blocker / "out", "participant"], tmp_path)
    assert code == 2 and "cannot create folder" in out


def test_network_without_a_model_is_bad_input(tiny_bids, tmp_path, capsys):
    code = main([str(tiny_bids), str(tmp_path / "out"), "participant", "--networks", "nosuchnet", "-w", str(tmp_path / "w")])
    assert code == 2
    assert "--networks nosuchnet: no model named <region>_nosuchnet" in capsys.readouterr().err
    assert not (tmp_path / "out" / "sub-01").exists()


def test_each_region_runs_its_default_network_unless_networks_are_named(tmp_path):
    from bids_muscle.cli.run import available_networks
    from bids_muscle.config import Config

    config = Config(bids_dir=tmp_path, output_dir=tmp_path / "out", analysis_level="participant", work_dir=tmp_path / "w",
                    regions=("thigh", "calf"))
    assert available_networks(config) == {"thigh": ["unet3d"], "calf": ["unet2d"]}
    named = Config(bids_dir=tmp_path, output_dir=tmp_path / "out", analysis_level="participant", work_dir=tmp_path / "w",
                   regions=("thigh", "calf"), networks=("unet2d", "hrnet"))
    assert available_networks(named) == {"thigh": ["unet2d", "hrnet"], "calf": ["unet2d", "hrnet"]}


def test_shipped_region_classifier_routes_phantom_images(tmp_path, capsys):
    from bids_muscle.cli.run import region_classifier
    from bids_muscle.config import Config

    root = generate_dataset(tmp_path / "bids", n_participants=1, seed=11, regions=("thigh", "calf"), n_slices=4)
    config = Config(bids_dir=root, output_dir=tmp_path / "out", analysis_level="participant", work_dir=tmp_path / "w")
    classify = region_classifier(config)
    for region in ("thigh", "calf"):
        predicted, probabilities = classify(root / f"sub-01/anat/sub-01_acq-{region}_T1w.nii.gz")
        assert predicted == region and probabilities[region] > 0.9
    assert "the region classifier says calf" in capsys.readouterr().out
    assert region_classifier(Config(bids_dir=root, output_dir=tmp_path, analysis_level="participant", work_dir=tmp_path,
                                    model_dir=str(tmp_path / "empty"))) is not None  # the package model is the fallback
