"""``bids_muscle bids_dir output_dir {participant,group}``: the BIDS App entry point.

Exit codes: 0 success, 1 processing failed, 2 bad arguments or bad input.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import shlex
import signal
import sys
import time
from pathlib import Path

from bids_muscle import __version__
from bids_muscle.config import Config, apply_environment_defaults
from bids_muscle.preflight import LOCK_NAME, InputError, check_dataset, check_folders, check_sidecars, folder_lock, lock_name

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


class BadInput(Exception):
    """Bad arguments or input detected before processing starts."""


def _json_file(value: str) -> dict:
    path = Path(value)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{path}: file not found")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"{path}: invalid JSON ({err.msg}, line {err.lineno})") from None
    if not isinstance(data, dict):
        raise argparse.ArgumentTypeError(f"{path}: must hold a JSON object")
    return data


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bids_muscle",
        description=(
            "Quantitative MRI of thigh and calf muscles from a BIDS dataset: N4 bias correction, "
            "T2 / water T2 / PD / B1 / fat fraction from multi-echo spin echo, fat fraction from "
            "multi-echo gradient echo, MTR, per-muscle biomarker tables and reports. "
            "The 'participant' level processes participants; the 'group' level aggregates their tables."
        ),
        epilog="Exit codes: 0 success, 1 processing failed, 2 bad arguments or bad input.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("bids_dir", type=Path, help="root of the input BIDS dataset (never written to)")
    parser.add_argument("output_dir", type=Path, help="derivatives folder to write (created if missing)")
    parser.add_argument("analysis_level", choices=["participant", "group"], help="processing stage")
    parser.add_argument("--version", action="version", version=f"bids_muscle {__version__}")

    sel = parser.add_argument_group("selecting data")
    sel.add_argument("--participant-label", "--participant_label", nargs="+", default=[], metavar="LABEL",
                     help="participants to process (with or without 'sub-'); all when omitted")
    sel.add_argument("--session-label", "--session-id", dest="session_label", metavar="LABEL",
                     help="only this session (with or without 'ses-'); all sessions when omitted")
    sel.add_argument("--bids-filter-file", type=_json_file, default={}, metavar="FILE",
                     help="JSON object of extra pybids filters per input, keyed by lower-case suffix "
                          "(mese, megre, mtr, t1w, pdw, t2w, tb1map, tb1dam), e.g. {\"mese\": {\"run\": 1}}")
    sel.add_argument("--regions", nargs="+", choices=["thigh", "calf"], default=["thigh", "calf"],
                     help="regions to process; files are matched by acq-thigh / acq-calf (files without acq- go to the "
                          "only region given, or to the region classifier's choice)")
    sel.add_argument("--skip-bids-validation", action="store_true",
                     help="index the dataset without checking file names against BIDS")

    seg = parser.add_argument_group("segmentation and biomarkers")
    seg.add_argument("--networks", nargs="+", metavar="NET",
                     help="segmentation networks to run (unet2d, unet3d, transunet, hrnet); models are looked up as "
                          "<region>_<net> in --model-dir or the package. Default: unet3d for the thigh and unet2d for the calf "
                          "(the best on the tests of docs/validation.md), when their models exist")
    seg.add_argument("--model-dir", type=Path, metavar="DIR",
                     help="folder with extra or replacement models (<name>.pt + <name>.json cards)")
    seg.add_argument("--write-probseg", action="store_true",
                     help="also write per-label probabilities (desc-<net>_probseg, 4D; large files)")
    seg.add_argument("--seg-scales", nargs="+", type=float, default=[0.9, 1.0, 1.1], metavar="F",
                     help="model voxel sizes (factors of the model's) each network segments at; the probabilities of "
                          "all scales and, with a Dixon pair, of the water, fat and water+fat images are averaged and "
                          "give each muscle's confidence (default: 0.9 1.0 1.1; 1 for a single pass)")
    seg.add_argument("--imat-method", choices=["dcae", "dcae-kmeans", "kmeans", "threshold"], default="dcae",
                     help="IMAT classification inside the muscle region: patch autoencoder with triplet loss + k-means "
                          "(dcae, default), autoencoder without triplet loss + k-means, k-means on the maps, or fat "
                          "fraction above 50 %% (threshold; also used when no multi-echo spin echo is present)")
    seg.add_argument("--erode-mm", type=float, default=0.0, metavar="MM",
                     help="erode each muscle mask by this radius before averaging maps (keeps partial-volume fat out)")

    qm = parser.add_argument_group("quantitative maps")
    qm.add_argument("--mese-denoise", choices=["mppca", "none"], default="mppca",
                    help="denoise the multi-echo spin echo before the EPG fits: local PCA with Marchenko-Pastur "
                         "thresholding (mppca, default) or none")
    qm.add_argument("--mese-fat-t2", type=float, default=Config.mese_fat_t2_ms, metavar="MS",
                    help="fat T2 (ms) of the two-component water/fat EPG fit (default: %(default)s, the EPG T2 of "
                         "subcutaneous fat in the real test scans; MyoQMRI uses 151)")
    qm.add_argument("--mese-refocus-width", type=float, default=Config.mese_refocus_width, metavar="RATIO",
                    help="slice profile of the EPG fits: refocusing over excitation slice thickness (default: "
                         "%(default)s; some vendors refocus a wider slice, MyoQMRI assumes 1.2; 0: an ideal slice, "
                         "no profile)")
    qm.add_argument("--dixon-fat-model", choices=["hamilton6", "single"], default=Config.dixon_fat_model,
                    help="fat spectrum of the Dixon water-fat separation: the 6-peak model of Hamilton et al. 2011 "
                         "(default) or a single peak at -3.4 ppm (classic Dixon, as musclemap; reads muscle fat "
                         "fraction lower)")

    grp = parser.add_argument_group("group level")
    grp.add_argument("--site-column", default="site",
                     help="column of participants.tsv that names the acquisition site")
    grp.add_argument("--reference-seg", type=Path, metavar="DERIV_DIR",
                     help="BIDS derivatives with reference muscle labels (sub-<p>_acq-<region>[_desc-manual]_dseg.nii.gz) "
                          "to compare every network with")

    perf = parser.add_argument_group("performance and execution")
    perf.add_argument("-w", "--work-dir", type=Path, default=Path("work"),
                      help="nipype working directory (intermediate files; reused on reruns); must lie outside bids_dir")
    perf.add_argument("--nprocs", "--n-cpus", type=_positive_int, default=os.cpu_count() or 1,
                      help="maximum number of processes for the MultiProc plugin")
    perf.add_argument("--omp-nthreads", type=_positive_int, default=1,
                      help="threads per process for numerical libraries (torch, BLAS, ITK)")
    perf.add_argument("--mem-gb", type=float, metavar="GB", help="memory limit for the MultiProc scheduler")
    perf.add_argument("--plugin", default="MultiProc",
                      help="nipype execution plugin: MultiProc, Linear, SLURM, SLURMGraph, SGE, PBS, ...")
    perf.add_argument("--plugin-settings", type=_json_file, default={}, metavar="FILE",
                      help="JSON file with nipype plugin settings: {\"plugin_args\": {...}}")
    perf.add_argument("--stop-on-first-crash", action="store_true", help="stop at the first failing node")
    perf.add_argument("--sloppy", action="store_true",
                      help="fast, low-accuracy settings (coarse dictionaries, fewer iterations) for tests")
    return parser


def parse_config(argv: list[str] | None = None) -> Config:
    parser = build_parser()
    opts = parser.parse_args(argv)
    bids_dir = opts.bids_dir.expanduser().resolve()
    output_dir = opts.output_dir.expanduser().resolve()
    if opts.erode_mm < 0:
        parser.error("--erode-mm must not be negative")
    if not all(0.5 <= f <= 2.0 for f in opts.seg_scales):
        parser.error("--seg-scales: factors must lie between 0.5 and 2")
    if not 40.0 <= opts.mese_fat_t2 <= 400.0:
        parser.error(f"--mese-fat-t2 {opts.mese_fat_t2:g}: fat T2 must lie between 40 and 400 ms")
    if opts.mese_refocus_width != 0 and not 0.5 <= opts.mese_refocus_width <= 3.0:
        parser.error(f"--mese-refocus-width {opts.mese_refocus_width:g}: use 0 (ideal slice) or a ratio from 0.5 to 3")
    if opts.reference_seg and not opts.reference_seg.is_dir():
        parser.error(f"--reference-seg {opts.reference_seg}: folder not found")
    if opts.model_dir and not opts.model_dir.is_dir():
        parser.error(f"--model-dir {opts.model_dir}: folder not found")
    try:
        check_folders(bids_dir, output_dir, opts.work_dir.expanduser().resolve())
    except InputError as err:
        parser.error(str(err))
    command = " ".join(shlex.quote(a) for a in ["bids_muscle", *(sys.argv[1:] if argv is None else argv)])
    return Config(
        bids_dir=bids_dir,
        output_dir=output_dir,
        analysis_level=opts.analysis_level,
        work_dir=opts.work_dir.expanduser().resolve(),
        participant_label=tuple(lab.removeprefix("sub-") for lab in opts.participant_label),
        session_label=opts.session_label.removeprefix("ses-") if opts.session_label else None,
        bids_filters=opts.bids_filter_file,
        regions=tuple(dict.fromkeys(opts.regions)),
        nprocs=opts.nprocs,
        omp_nthreads=opts.omp_nthreads,
        mem_gb=opts.mem_gb,
        skip_bids_validation=opts.skip_bids_validation,
        plugin=opts.plugin,
        plugin_settings=opts.plugin_settings,
        stop_on_first_crash=opts.stop_on_first_crash,
        sloppy=opts.sloppy,
        mese_denoise=opts.mese_denoise,
        mese_fat_t2_ms=opts.mese_fat_t2,
        mese_refocus_width=opts.mese_refocus_width,
        dixon_fat_model=opts.dixon_fat_model,
        site_column=opts.site_column,
        reference_seg=opts.reference_seg.expanduser().resolve() if opts.reference_seg else None,
        networks=tuple(dict.fromkeys(opts.networks or ())),
        model_dir=str(opts.model_dir.expanduser().resolve()) if opts.model_dir else None,
        erode_mm=opts.erode_mm,
        imat_method=opts.imat_method,
        write_probseg=opts.write_probseg,
        seg_scales=tuple(opts.seg_scales),
        command=command,
    )


def _log(message: str) -> None:
    print(f"[bids_muscle {time.strftime('%H:%M:%S')}] {message}", flush=True)


#: Locks of the output and work folders, held until :func:`main` returns.
_FOLDER_LOCKS = contextlib.ExitStack()


def _check_writable(path: Path, parts: tuple[str, ...] = ()) -> None:
    """Create ``path`` and lock it for this run (a second run on it is refused).

    With ``parts`` (``sub-<label>``, ``group``) only those parts of the folder
    are locked, so that the tasks of a job array, one participant each, share
    one output folder; two runs on the same participant are still refused."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise BadInput(f"{path}: cannot create folder ({err.strerror})") from None
    if not os.access(path, os.W_OK):
        raise BadInput(f"{path}: folder is not writable")
    names = [lock_name(part) for part in parts] or [LOCK_NAME]
    if not all([_FOLDER_LOCKS.enter_context(folder_lock(path, name)) for name in names]):
        _log(f"warning: {path}: the file system cannot lock files; make sure no other run uses this folder")


def _configure_nipype(config: Config) -> None:
    from nipype import config as ncfg
    from nipype import logging as nlogging

    ncfg.set("execution", "crashfile_format", "txt")
    ncfg.set("execution", "stop_on_first_crash", str(config.stop_on_first_crash))
    ncfg.set("execution", "remove_unnecessary_outputs", "false")
    ncfg.set("monitoring", "enabled", "false")
    ncfg.set("logging", "workflow_level", "WARNING")
    ncfg.set("logging", "interface_level", "WARNING")
    ncfg.set("logging", "utils_level", "WARNING")
    nlogging.update_logging(ncfg)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"):
        os.environ[var] = str(config.omp_nthreads)
    # nipype's SLURM plugin names its jobs after $LOGNAME, which batch jobs,
    # containers and CI runners often lack (the run then fails with KeyError)
    if not os.environ.get("LOGNAME"):
        import getpass

        try:
            os.environ["LOGNAME"] = getpass.getuser()
        except (KeyError, OSError):  # a uid without a passwd entry
            os.environ["LOGNAME"] = str(os.getuid())


def _run_workflow(workflow, config: Config) -> list[Path]:
    """Run a nipype workflow; returns the crash files written (empty on success)."""
    crash_dir = config.work_dir / "crash"
    crash_dir.mkdir(parents=True, exist_ok=True)
    workflow.base_dir = str(config.work_dir)
    workflow.config["execution"]["crashdump_dir"] = str(crash_dir)
    if config.plugin in ("MultiProc", "Linear"):
        # local plugins: poll often; a chain of short nodes otherwise waits 2 s per step
        workflow.config["execution"]["poll_sleep_duration"] = 0.05
    before = set(crash_dir.glob("crash-*"))
    # MultiProc calls gc.collect() at every scheduling step; with torch and the
    # scientific stack loaded each call walks the whole heap (0.2 s). Freezing
    # what exists now leaves it only the objects made while the graph runs.
    gc.freeze()
    try:
        workflow.run(plugin=config.plugin, plugin_args=config.plugin_args())
    except Exception as err:  # nipype raises RuntimeError; plugins may raise others
        crashes = sorted(set(crash_dir.glob("crash-*")) - before)
        if not crashes:
            _log(f"workflow {workflow.name} failed: {err}")
            crashes = [crash_dir]
        return crashes
    return []


def _summarise_crashes(crashes: list[Path]) -> None:
    for crash in crashes:
        if crash.is_file():
            text = crash.read_text(errors="replace")
            node = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("Node:")), "?")
            err = next((ln.strip() for ln in reversed(text.splitlines()) if ln.strip()), "")
            _log(f"FAILED node {node}: {err}  (details: {crash})")


def available_networks(config: Config) -> dict[str, list[str]]:
    """Networks with a model for each region: the requested ones, or each
    region's default plus every network that ``--model-dir`` holds a model
    ``<region>_<net>`` for (a model a user trained is meant to be used). A
    requested network without any model is bad input."""
    from bids_muscle.interfaces.segmentation import model_name
    from bids_muscle.seg.nets import SEGMENTATION_NETWORKS
    from bids_muscle.seg.zoo import list_models, region_networks

    names = {card.name for card in list_models(config.model_dir)}
    user = {card.name for card in list_models(config.model_dir, package=False)} if config.model_dir else set()
    found = {}
    for region in config.regions:
        nets = list(region_networks(region, config.networks))
        if not config.networks:
            extra = [n for n in SEGMENTATION_NETWORKS if n not in nets and model_name(region, n) in user]
            if extra:
                _log(f"{region}: --model-dir {config.model_dir} holds {', '.join(model_name(region, n) for n in extra)}: "
                     f"running {', '.join(extra)} beside the default {', '.join(nets)}")
            nets += extra
        found[region] = [n for n in nets if model_name(region, n) in names]
    for net in config.networks:
        if not any(net in nets for nets in found.values()):
            have = ", ".join(sorted(names)) or "none"
            raise BadInput(f"--networks {net}: no model named <region>_{net} (available models: {have})")
    return found


def region_classifier(config: Config):
    """``classify(path) -> (region, probabilities)`` with the region
    classifier model, for images without ``acq-<region>``; None when no such
    model is installed."""
    from bids_muscle.seg.zoo import find_card

    try:
        find_card("region_classifier", config.model_dir)
    except ValueError:
        return None
    loaded = []

    def classify(path: Path) -> tuple[str, dict]:
        import nibabel as nib
        import numpy as np

        from bids_muscle.seg.infer import classify_region
        from bids_muscle.seg.zoo import load_model

        if not loaded:
            loaded.extend(load_model("region_classifier", config.model_dir))
        image = nib.load(str(path))
        data = np.asarray(image.dataobj, dtype=np.float32)
        region, probabilities = classify_region(data[..., 0] if data.ndim == 4 else data, image.affine, *loaded,
                                                num_threads=config.nprocs)
        _log(f"{path.name}: no acq-<region>; the region classifier says {region} (p = {probabilities[region]:.2f})")
        return region, probabilities

    return classify


def write_label_tables(config: Config, networks: dict[str, list[str]]) -> None:
    from bids_muscle import bids
    from bids_muscle.seg.labels import dseg_tsv_text

    for net in sorted({n for nets in networks.values() for n in nets}):
        regions = [r for r in config.regions if net in networks[r]]
        rows = [dseg_tsv_text(r).splitlines() for r in regions]
        text = "\n".join(rows[0] + [line for other in rows[1:] for line in other[1:]]) + "\n"
        bids.write_dseg_table(config.output_dir, net, text)


def check_models(config: Config, networks: dict[str, list[str]], classify) -> None:
    """Check every model the run will load (card, weights, sha256) before any
    processing, and every card of ``--model-dir``; a missing, truncated or
    altered file is bad input, named."""
    from bids_muscle.imat.classify import INPUT_PAIRS
    from bids_muscle.imat.dcae import load_encoder
    from bids_muscle.interfaces.segmentation import model_name
    from bids_muscle.seg.zoo import find_card, verify_model

    names = {model_name(region, net) for region, nets in networks.items() for net in nets}
    for region in (r for r, nets in networks.items() if nets):
        with contextlib.suppress(ValueError):  # optional: without it the muscle labels make the region
            find_card(model_name(region, "muscleregion"), config.model_dir)
            names.add(model_name(region, "muscleregion"))
    if classify is not None:
        names.add("region_classifier")
    cards = sorted(Path(config.model_dir).glob("*.json")) if config.model_dir else []
    encoders = {triplet if config.imat_method == "dcae" else plain for _, triplet, plain in INPUT_PAIRS} \
        if config.imat_method in ("dcae", "dcae-kmeans") else set()
    try:
        for name in [*sorted(names), *cards]:
            verify_model(name, config.model_dir)
        for name in sorted(encoders):
            load_encoder(name)
    except ValueError as err:
        raise BadInput(f"model check failed: {err}") from None


def participant_inputs(layout, broken: dict, sub: str, ses: str | None, config: Config, classify=None) -> list:
    """Checked inputs of one participant (and session), by region.

    Raises :class:`InputError` with a one-line message naming the file and
    the problem: a sidecar of ``broken`` (see
    :func:`bids_muscle.preflight.check_sidecars`), a bad value or image found
    by :func:`bids_muscle.bids.collect_inputs`, or any other failure while
    reading the inputs (then the message names the participant and the error).
    """
    from bids_muscle import bids

    if (sub, ses) in broken or (sub, None) in broken:
        raise InputError(broken.get((sub, ses)) or broken[(sub, None)])
    try:
        return bids.collect_inputs(layout, sub, ses, config.regions, config.bids_filters, classify)
    except InputError:
        raise
    except Exception as err:  # an input no check foresaw must not end the run of the others
        raise InputError(f"sub-{sub}: cannot collect its inputs ({type(err).__name__}: {' '.join(str(err).split())})") from None


def run_participant(config: Config) -> int:
    from bids_muscle import bids
    from bids_muscle.workflows.base import init_participant_wf, input_warnings

    broken = check_sidecars(config.bids_dir)  # pybids would fail on the whole dataset: leave these out
    layout = bids.load_layout(config.bids_dir, validate=not config.skip_bids_validation, exclude=broken)
    pairs = bids.participants_and_sessions(layout, list(config.participant_label), config.session_label, broken)
    subjects = tuple(dict.fromkeys(f"sub-{sub}" for sub, _ in pairs))
    _check_writable(config.output_dir, subjects)
    _check_writable(config.work_dir)
    for subject in subjects:
        bids.remove_temporaries(config.output_dir / subject)
    networks = available_networks(config)
    classify = region_classifier(config) if len(config.regions) > 1 else None
    check_models(config, networks, classify)
    bids.init_derivatives(config.output_dir, config.bids_dir)
    write_label_tables(config, networks)
    input_errors, crashes, done = [], [], 0
    for sub, ses in pairs:
        tag = f"sub-{sub}" + (f" ses-{ses}" if ses else "")
        try:
            regions = participant_inputs(layout, broken, sub, ses, config, classify)
        except InputError as err:
            _log(f"{tag}: skipped: {err}")
            input_errors.append(str(err))
            continue
        if not regions:
            msg = f"{tag}: no usable images for regions {', '.join(config.regions)}"
            _log(f"{tag}: skipped: {msg}")
            input_errors.append(msg)
            continue
        _log(f"{tag}: processing {', '.join(r.region for r in regions)}")
        for warning in (w for rin in regions for w in input_warnings(rin)):
            _log(f"{tag}: warning: {warning}")
        workflow = init_participant_wf(config, sub, ses, regions, networks)
        t0 = time.time()
        failed = _run_workflow(workflow, config)
        if failed:
            crashes += failed
            _log(f"{tag}: FAILED after {time.time() - t0:.0f} s")
        else:
            done += 1
            _log(f"{tag}: done in {time.time() - t0:.0f} s -> {bids.report_path(config.output_dir, sub, ses)}")
    _summarise_crashes(crashes)
    _log(f"{done} of {len(pairs)} participant(s) finished; outputs in {config.output_dir}")
    if crashes:
        return EXIT_FAILED
    return EXIT_BAD_INPUT if input_errors else EXIT_OK


def run_group(config: Config) -> int:
    from bids_muscle import bids
    from bids_muscle.workflows.group import init_group_wf

    if not (config.output_dir / "dataset_description.json").is_file():
        raise BadInput(f"{config.output_dir}: no participant outputs found; run the participant level first")
    _check_writable(config.output_dir, ("group",))
    _check_writable(config.work_dir)
    bids.remove_temporaries(config.output_dir / "group")
    workflow = init_group_wf(config)
    crashes = _run_workflow(workflow, config)
    _summarise_crashes(crashes)
    if crashes:
        return EXIT_FAILED
    _log(f"group outputs in {config.output_dir / 'group'}")
    return EXIT_OK


def _quiet_interrupts() -> None:
    """Ctrl-C ends the run with one line: worker processes (forked by MultiProc,
    inheriting this handler) leave silently, the main process raises
    KeyboardInterrupt for :func:`main` to report, and the process pool's
    complaints about its vanished workers are not printed."""
    main_pid = os.getpid()

    def handler(signum, frame):
        if os.getpid() != main_pid:
            os._exit(EXIT_INTERRUPTED)
        logging.getLogger("concurrent.futures").disabled = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)


def main(argv: list[str] | None = None) -> int:
    apply_environment_defaults()
    config = parse_config(argv)
    try:
        check_dataset(config.bids_dir)  # before the heavy imports: a wrong path is refused at once
        _quiet_interrupts()
        _configure_nipype(config)
        if config.analysis_level == "participant":
            return run_participant(config)
        return run_group(config)
    except (InputError, BadInput) as err:
        print(f"bids_muscle: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"bids_muscle: interrupted; rerun with the same -w to resume ({config.work_dir})", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as err:  # e.g. a full disk while writing the dataset-level files
        print(f"bids_muscle: error: {err}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        _FOLDER_LOCKS.close()


if __name__ == "__main__":
    sys.exit(main())
