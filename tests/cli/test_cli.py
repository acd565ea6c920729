"""The command line: flags, exit codes and bad input (nothing written into the input)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
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


def test_model_choices_default_to_the_fit_constants_and_are_checked(tmp_path, capsys):
    from bids_muscle.qmri.epg import default_slice_profile
    from bids_muscle.qmri.fat_spectrum import fat_spectrum
    from bids_muscle.qmri.t2_dictionary import FAT_T2_S

    base = [str(tmp_path / "in"), str(tmp_path / "out"), "participant"]
    cfg = parse_config(base)
    assert cfg.mese_fat_t2_ms == pytest.approx(FAT_T2_S * 1000.0)
    assert cfg.mese_refocus_width == 1.0 and cfg.dixon_fat_model == "hamilton6"
    assert np.array_equal(default_slice_profile().refocus_scale,
                          default_slice_profile(refocus_width_ratio=cfg.mese_refocus_width).refocus_scale)
    assert len(fat_spectrum(cfg.dixon_fat_model)[0]) == 6
    cfg = parse_config(base + ["--mese-fat-t2", "151", "--mese-refocus-width", "0", "--dixon-fat-model", "single"])
    assert (cfg.mese_fat_t2_ms, cfg.mese_refocus_width, cfg.dixon_fat_model) == (151.0, 0.0, "single")
    for bad in (["--mese-fat-t2", "0.14"], ["--mese-refocus-width", "0.2"]):
        with pytest.raises(SystemExit) as ex:
            parse_config(base + bad)
        assert ex.value.code == 2 and bad[0] in capsys.readouterr().err


def test_output_inside_input_top_level_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as ex:
        parse_config([str(tmp_path), str(tmp_path / "out"), "participant", "-w", str(tmp_path.parent / "w")])
    assert ex.value.code == 2
    with pytest.raises(SystemExit) as ex:
        parse_config([str(tmp_path), str(tmp_path / "sub-01" / "out"), "participant", "-w", str(tmp_path.parent / "w")])
    assert ex.value.code == 2
    # the BIDS convention is allowed
    cfg = parse_config([str(tmp_path), str(tmp_path / "derivatives" / "bids_muscle"), "participant",
                        "-w", str(tmp_path.parent / "w")])
    assert cfg.output_dir == tmp_path / "derivatives" / "bids_muscle"


def test_work_folder_inside_the_input_is_refused(tmp_path, monkeypatch, capsys):
    bids_dir = tmp_path / "bids"
    bids_dir.mkdir()
    monkeypatch.chdir(bids_dir)  # bids_muscle . OUT participant: the default ./work would land inside the dataset
    for args in ([".", str(tmp_path / "out"), "participant"],
                 [str(bids_dir), str(tmp_path / "out"), "participant", "-w", str(bids_dir / "derivatives" / "work")]):
        with pytest.raises(SystemExit) as ex:
            parse_config(args)
        assert ex.value.code == 2
        assert "inside the input dataset" in capsys.readouterr().err
    assert list(bids_dir.iterdir()) == []


def test_bad_paths_are_refused_before_the_heavy_imports(tmp_path):
    probe = ("import sys; from bids_muscle.cli.run import main; "
             f"code = main([{str(tmp_path / 'missing')!r}, {str(tmp_path / 'out')!r}, 'participant', "
             f"'-w', {str(tmp_path / 'w')!r}]); "
             "print(code, sorted(m for m in ('nipype', 'torch', 'bids', 'nibabel') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.stdout.split("\n")[0] == "2 []", proc.stdout + proc.stderr
    assert "missing: input folder does not exist" in proc.stderr


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


@pytest.mark.slow
def test_ctrl_c_prints_one_line_and_the_rerun_resumes(tiny_bids, tmp_path):
    import signal
    import time

    args = [sys.executable, "-m", "bids_muscle.cli.run", str(tiny_bids), str(tmp_path / "out"), "participant",
            "--sloppy", "-w", str(tmp_path / "work"), "--nprocs", "2"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list((tmp_path / "work").glob("sub_01_wf/*/*/result_*.pklz")):
        time.sleep(0.2)  # interrupt once the graph runs: a node has finished
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the whole foreground process group
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    assert err.strip().splitlines() == [f"bids_muscle: interrupted; rerun with the same -w to resume ({tmp_path / 'work'})"]
    assert "Traceback" not in out + err
    assert not list((tmp_path / "out").rglob("*.tmp*"))
    rerun = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert (tmp_path / "out" / "sub-01" / "anat" / "sub-01_acq-calf_desc-water_T2map.nii.gz").is_file()


def test_a_model_dir_model_of_another_network_runs_beside_the_default(tmp_path, capsys):
    from bids_muscle.cli.run import available_networks
    from bids_muscle.seg.zoo import find_card

    card = find_card("calf_hrnet", None)
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(card, models / card.name)
    shutil.copy(card.with_suffix(".pt"), models / "calf_hrnet.pt")
    cfg = parse_config([str(tmp_path / "in"), str(tmp_path / "o"), "participant", "--model-dir", str(models),
                        "-w", str(tmp_path / "w")])
    assert available_networks(cfg) == {"thigh": ["unet3d"], "calf": ["unet2d", "hrnet"]}
    assert "calf_hrnet" in capsys.readouterr().out
    named = parse_config([str(tmp_path / "in"), str(tmp_path / "o"), "participant", "--model-dir", str(models),
                          "--networks", "unet2d", "-w", str(tmp_path / "w")])
    assert available_networks(named) == {"thigh": ["unet2d"], "calf": ["unet2d"]}
