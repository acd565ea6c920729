"""How many ms of MESE water T2 each model choice of the two-component fit moves.

Users compare our water T2 with MyoQMRI 2.0.2, whose model differs from ours
in the slice profile (ours: :func:`bids_muscle.qmri.epg.default_slice_profile`,
12 points of a small-tip Hann-sinc profile, time-bandwidth 3, equal widths;
MyoQMRI: 20 bins of an SLR-transformed Hann-sinc profile, time-bandwidth 2,
``--refocusing-width 1.2``, which its binning turns into an effective
refocusing width ratio of 1.0, see :func:`myoqmri_profile`) and in the fixed
fat T2 (151 ms against our ``FAT_T2_S`` = 140 ms). This script measures each
choice:

1. Real data: the two real MESE series of ``../shared/data`` (Philips calf,
   17 echoes x 7.6 ms; Siemens thigh, 17 echoes x 10.9 ms), cropped to three
   central slices of one leg, fitted by
   :func:`bids_muscle.qmri.t2.fit_t2_water_fat` with one choice changed at a
   time (plus two rows with MyoQMRI's own profile, when it is installed).
   Muscle is the mask of ``bench_t2._tissue_masks`` (computed on the whole
   volume, then cropped), restricted to default-fit FF < 60 %. Per choice:
   median water T2, median voxel-wise shift against the default, median FF
   and B1, and the median relative residual ``|s - model| / |s|`` of the
   fitted echo train (the fit does not return one; it is recomputed with
   :func:`bids_muscle.qmri.t2.simulate_mese` from the fitted maps, with the
   same model options), on the muscle voxels that every choice fitted.
   With ``--myoqmri``, MyoQMRI (defaults, one core) fits the middle slice of
   each crop and every choice is compared with it voxel by voxel.
2. Cross-simulation: noiseless echo trains of our forward model with the
   MyoQMRI-like choices at water T2 30/35/40 ms, FF 5/20 %, B1 0.8/1.0/1.1,
   fitted with our default model, for the two echo spacings (11 ms: the
   users' protocol and the thigh's 10.9 ms; 7.6 ms: the calf).
3. ``--myoqmri``: MyoQMRI also fits the 11 ms simulated trains (of its own
   model and of ours), laid out as 6 x 6 voxel patches of one image.

MyoQMRI is installed by ``bench_t2.myoqmri_comparison`` (``bench_t2.py
--myoqmri``) into /tmp/bids_muscle_myoqmri_venv; it is GPL and only ever run
as a separate program. No MP-PCA denoising unless the row says so (bench_t2
found that it leaves the real medians unchanged). One process, one thread.

Run: ``.venv/bin/python benchmarks/t2_model_choices.py [--skip-real] [--skip-sim] [--myoqmri [--skip-myoqmri-thigh]]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_t2 import SHARED, _tissue_masks, load_calf, load_thigh  # noqa: E402

from bids_muscle.qmri.denoise import denoise_mppca  # noqa: E402
from bids_muscle.qmri.epg import SliceProfile, default_slice_profile  # noqa: E402
from bids_muscle.qmri.t2 import FAT_T2_S, fit_t2_water_fat, simulate_mese  # noqa: E402

MYOQMRI_FAT_T2_S = 0.151
THIGH_TR_S = 4.1  # RepetitionTime of the Siemens DICOM; the calf NIfTI has none
MYOQMRI_VENV = Path(tempfile.gettempdir()) / "bids_muscle_myoqmri_venv"


def myoqmri_profile() -> SliceProfile | None:
    """MyoQMRI 2.0.2's own slice profile at its defaults (SLR, time-bandwidth
    2, ``--refocusing-width 1.2``, which its ``waterT2`` lowers by 1 before
    passing it on as ``refWidthFactor`` 0.2), read from its
    ``FatFractionLookup`` in the /tmp virtual environment (a subprocess:
    never imported here), as a :class:`SliceProfile` of our model; None when
    MyoQMRI is not installed. Our EPG with this profile reproduces
    MyoQMRI's normalised water and fat echo trains to 1e-15."""
    python = MYOQMRI_VENV / "bin" / "python"
    if not python.exists():
        return None
    code = (
        "import json; from MyoQMRI.waterT2.FatFractionLookup import FatFractionLookup as F;"
        "f = F((20, 80), (0.5, 1.2), 151, 17, 10.0, refWidthFactor=0.2);"
        "print(json.dumps([list(map(float, f.sliceProf90)), list(map(float, f.sliceProf180))]))"
    )
    with tempfile.TemporaryDirectory() as work:
        run = subprocess.run([str(python), "-c", code], cwd=work, capture_output=True, text=True, timeout=300, check=False)
    if run.returncode != 0:
        print(f"MyoQMRI profile: not available ({run.stderr[-300:]})")
        return None
    excite, refocus = (np.asarray(a) for a in json.loads(run.stdout.strip().splitlines()[-1]))
    keep = excite > 0  # positions without excitation give no signal
    return SliceProfile(refocus[keep] / 180.0, excite[keep] / 90.0, np.full(keep.sum(), 1.0 / keep.sum()))


def effective_width_ratio(profile: SliceProfile) -> float:
    """Median ratio of the position where the refocusing profile reaches a
    value to the position where the excitation profile does (both relative)."""
    e = profile.excite_scale / profile.excite_scale[0]
    r = profile.refocus_scale / profile.refocus_scale[0]
    pos = np.arange(e.size) + 0.5
    return float(np.median(pos[1:] / np.interp(-r[1:], -e, pos)))


MYO_PROFILE: SliceProfile | None = None  # set in main()


def choices(tr_s: float | None) -> list[tuple[str, dict]]:
    """(label, keyword arguments of fit_t2_water_fat and simulate_mese)."""
    rows = [
        ("default (TB 3, width ratio 1.0, fat T2 140 ms, TR ignored)", {}),
        ("refocus width ratio 1.2 (MyoQMRI-like)", {"slice_profile": default_slice_profile(refocus_width_ratio=1.2)}),
        ("refocus width ratio 1.5", {"slice_profile": default_slice_profile(refocus_width_ratio=1.5)}),
        ("time-bandwidth 2", {"slice_profile": default_slice_profile(time_bandwidth=2.0)}),
        ("time-bandwidth 4", {"slice_profile": default_slice_profile(time_bandwidth=4.0)}),
        ("no slice profile", {"slice_profile": None}),
        ("fat T2 151 ms", {"fat_t2_s": MYOQMRI_FAT_T2_S}),
    ]
    if tr_s is not None:
        rows.append((f"TR {tr_s:g} s (T1 saturation of PD)", {"tr_s": tr_s}))
    rows.append((
        "MyoQMRI-like: width ratio 1.2 + fat T2 151 ms",
        {"slice_profile": default_slice_profile(refocus_width_ratio=1.2), "fat_t2_s": MYOQMRI_FAT_T2_S},
    ))
    if MYO_PROFILE is not None:
        rows.append(("MyoQMRI 2.0.2's own profile (SLR TB 2, -w 1.2)", {"slice_profile": MYO_PROFILE}))
        rows.append((
            "MyoQMRI 2.0.2's own profile + fat T2 151 ms",
            {"slice_profile": MYO_PROFILE, "fat_t2_s": MYOQMRI_FAT_T2_S},
        ))
    return rows


def relative_residual(echoes: np.ndarray, te: np.ndarray, fit: dict, where: np.ndarray, kwargs: dict) -> np.ndarray:
    """|s - model| / |s| of the voxels ``where`` (fitted maps must be finite there)."""
    ff = np.clip(fit["ff_percent"][where], 0.0, 100.0)
    model = simulate_mese(fit["pd"][where], ff, fit["water_t2_s"][where], fit["b1"][where], te, **kwargs)
    s = echoes[where]
    return np.linalg.norm(s - model, axis=-1) / np.linalg.norm(s, axis=-1)


def real_series(name: str, echoes: np.ndarray, te: np.ndarray, crop: tuple, tr_s: float | None) -> None:
    """Fit one cropped series with every choice and print the Markdown table."""
    foreground, muscle, _ = _tissue_masks(echoes)  # whole-volume percentiles, as bench_t2
    echoes, foreground, muscle = echoes[crop], foreground[crop], muscle[crop]
    rows, fits = choices(tr_s), {}
    rows.insert(1, ("default + MP-PCA denoising (the app's default)", {"denoise": True}))
    for label, kwargs in rows:
        start = time.perf_counter()
        data = echoes
        fit_kwargs = dict(kwargs)
        if fit_kwargs.pop("denoise", False):
            data = denoise_mppca(echoes, foreground)[0]
        fit = fit_t2_water_fat(data, te, mask=foreground, **fit_kwargs)
        fits[label] = (fit, fit_kwargs, data, time.perf_counter() - start)
    default_label = rows[0][0]
    default = fits[default_label][0]
    lean = muscle & (default["ff_percent"] < 60.0)
    common = lean.copy()
    for fit, *_ in fits.values():
        common &= np.isfinite(fit["water_t2_s"]) & np.isfinite(fit["b1"]) & np.isfinite(fit["ff_percent"])
    print(
        f"\n### {name}: {echoes.shape[:3]} voxels x {te.size} echoes (ESP {1000 * (te[1] - te[0]):.1f} ms), "
        f"{foreground.sum()} fitted, muscle {muscle.sum()}, muscle with default FF < 60 % {lean.sum()}, "
        f"fitted by every choice {common.sum()}\n"
    )
    print("| choice | water T2 in muscle, ms | shift vs default, ms | FF, % | B1 | relative residual | T2 NaN, % | fit s |")
    print("|---|---|---|---|---|---|---|---|")
    ref_t2 = default["water_t2_s"] * 1000.0
    for label, (fit, kwargs, data, wall) in fits.items():
        t2 = fit["water_t2_s"] * 1000.0
        both = lean & np.isfinite(t2) & np.isfinite(ref_t2)
        residual = relative_residual(data, te, fit, common, kwargs)
        print(
            f"| {label} | {np.nanmedian(t2[lean]):.2f} | {np.median(t2[both] - ref_t2[both]):+.2f} | "
            f"{np.nanmedian(fit['ff_percent'][lean]):.2f} | {np.nanmedian(fit['b1'][lean]):.3f} | "
            f"{100 * np.median(residual):.3f} % | {100 * np.mean(np.isnan(t2[lean])):.1f} | {wall:.1f} |"
        )
    sys.stdout.flush()
    return echoes, foreground, lean, fits


def myoqmri_real(name: str, te: np.ndarray, crop_result, slice_index: int) -> None:
    """MyoQMRI 2.0.2 (its defaults, one core) on one slice of the crop; voxel-wise
    water T2 against each of our choices in the muscle voxels both fitted."""
    import nibabel as nib

    cli = MYOQMRI_VENV / "bin" / "waterT2"
    if not cli.exists():
        print(f"\nMyoQMRI on {name}: skipped (not installed)")
        return
    echoes, foreground, lean, fits = crop_result
    image = echoes[:, :, slice_index : slice_index + 1]
    scale = 20000.0 / float(image.max())  # int16 NIfTI; T2 is scale-invariant
    # MyoQMRI skips voxels whose largest echo is below its noise level: use our foreground threshold
    noise = int(np.floor(scale * image[..., 0][foreground[:, :, slice_index]].min()))
    work = Path(tempfile.mkdtemp(prefix="t2_choices_myoqmri_"))
    nifti = work / "mese.nii.gz"
    nib.save(nib.Nifti1Image(np.round(scale * image).astype(np.int16), np.diag([1.0, 1.0, 10.0, 1.0])), nifti)
    (work / "mese.json").write_text(json.dumps({"EchoTime": [round(t * 1000.0, 3) for t in te], "FourthDimension": "EchoTime"}))
    start = time.perf_counter()
    # its default multiprocess fit (-t 2), pinned to one core
    run = subprocess.run(
        ["taskset", "-c", "0", str(cli), str(nifti), "-b", "--path-is-nifti", "-t", "2", "-n", str(noise)],
        cwd=work, capture_output=True, text=True, timeout=1200, check=False,
    )
    elapsed = time.perf_counter() - start
    maps = {key: sorted(work.rglob(f"*_{key}.nii.gz")) for key in ("T2", "FF", "B1")}
    if run.returncode != 0 or not all(maps.values()):
        print(f"\nMyoQMRI on {name}: failed (exit {run.returncode}): {run.stdout[-400:]} {run.stderr[-400:]}")
        return
    theirs = {k: np.asarray(nib.load(v[0]).dataobj, np.float32).reshape(image.shape[:2]) for k, v in maps.items()}
    theirs["FF"] = theirs["FF"] * 100.0
    muscle = lean[:, :, slice_index] & (theirs["T2"] > 0)
    # voxels on MyoQMRI's T2 grid bounds (20, 80 ms) are kept: its output has no NaN
    print(
        f"\n#### MyoQMRI 2.0.2 on {name}, slice {slice_index} of the crop ({elapsed:.0f} s, one core, defaults: -w 1.2, fat T2 151 ms, "
        f"noise level {noise}); {muscle.sum()} muscle voxels; MyoQMRI median water T2 {np.median(theirs['T2'][muscle]):.2f} ms, "
        f"FF {np.median(theirs['FF'][muscle]):.2f} %, B1 {np.median(theirs['B1'][muscle]):.3f}\n"
    )
    print("| our choice | our water T2, ms | ours - MyoQMRI, median, ms | by MyoQMRI B1 tercile | r | our FF - MyoQMRI FF, points |")
    print("|---|---|---|---|---|---|")
    b1_theirs = theirs["B1"][muscle]
    edges = np.quantile(b1_theirs, [1 / 3, 2 / 3])
    tercile = np.digitize(b1_theirs, edges)
    for label, (fit, *_rest) in fits.items():
        ours = fit["water_t2_s"][:, :, slice_index][muscle] * 1000.0
        ok = np.isfinite(ours)
        diff = ours - theirs["T2"][muscle]
        by_b1 = " / ".join(f"{np.median(diff[ok & (tercile == k)]):+.2f}" for k in range(3))
        ff_diff = fit["ff_percent"][:, :, slice_index][muscle] - theirs["FF"][muscle]
        print(
            f"| {label} | {np.median(ours[ok]):.2f} | {np.median(diff[ok]):+.2f} | {by_b1} | "
            f"{np.corrcoef(ours[ok], theirs['T2'][muscle][ok])[0, 1]:.3f} | {np.nanmedian(ff_diff):+.2f} |"
        )
    print(f"(B1 terciles of MyoQMRI's B1: <{edges[0]:.2f}, {edges[0]:.2f}-{edges[1]:.2f}, >{edges[1]:.2f})")
    sys.stdout.flush()
    shutil.rmtree(work, ignore_errors=True)


def simulated_grid():
    """Truth of the simulation: every (T2, FF, B1) combination."""
    t2, ff, b1 = np.meshgrid([0.030, 0.035, 0.040], [5.0, 20.0], [0.8, 1.0, 1.1], indexing="ij")
    return t2.ravel(), ff.ravel(), b1.ravel()


def cross_simulation(myoqmri: bool) -> None:
    t2_true, ff_true, b1_true = simulated_grid()
    myo_like = {"slice_profile": default_slice_profile(refocus_width_ratio=1.2), "fat_t2_s": MYOQMRI_FAT_T2_S}
    simulations = (
        ("MyoQMRI-like (ratio 1.2 + fat T2 151 ms)", myo_like),
        ("width ratio 1.2 only", {"slice_profile": myo_like["slice_profile"]}),
        ("fat T2 151 ms only", {"fat_t2_s": MYOQMRI_FAT_T2_S}),
        ("default (self-consistency)", {}),
    )
    if MYO_PROFILE is not None:
        simulations = simulations[:1] + (
            ("MyoQMRI 2.0.2's own profile + fat T2 151 ms", {"slice_profile": MYO_PROFILE, "fat_t2_s": MYOQMRI_FAT_T2_S}),
            ("MyoQMRI 2.0.2's own profile only", {"slice_profile": MYO_PROFILE}),
        ) + simulations[1:]
    for esp in (0.011, 0.0076):
        te = esp * np.arange(1, 18)
        print(
            f"\n### Cross-simulation, 17 echoes x {1000 * esp:.1f} ms: noiseless trains of the model in the first column, "
            "fitted with our default model; error = fitted - true\n"
        )
        print("| simulated with | water T2 error, median (min..max), ms | at B1 0.8 / 1.0 / 1.1 | at FF 5 / 20 % | FF error, points | B1 error |")
        print("|---|---|---|---|---|---|")
        for label, kwargs in simulations:
            signal = simulate_mese(np.full(t2_true.shape, 1000.0), ff_true, t2_true, b1_true, te, **kwargs)
            fit = fit_t2_water_fat(signal[:, None, None, :], te, b1_smoothing_voxels=None)
            err = (fit["water_t2_s"].ravel() - t2_true) * 1000.0
            by_b1 = " / ".join(f"{np.nanmedian(err[b1_true == b]):+.2f}" for b in (0.8, 1.0, 1.1))
            by_ff = " / ".join(f"{np.nanmedian(err[ff_true == f]):+.2f}" for f in (5.0, 20.0))
            print(
                f"| {label} | {np.nanmedian(err):+.2f} ({np.nanmin(err):+.2f}..{np.nanmax(err):+.2f}) | {by_b1} | {by_ff} | "
                f"{np.nanmedian(fit['ff_percent'].ravel() - ff_true):+.2f} | {np.nanmedian(fit['b1'].ravel() - b1_true):+.3f} |"
            )
        sys.stdout.flush()
        if myoqmri and abs(esp - 0.011) < 1e-9:
            myoqmri_on_simulation(
                te, myo_like if MYO_PROFILE is None else {"slice_profile": MYO_PROFILE, "fat_t2_s": MYOQMRI_FAT_T2_S}
            )


def myoqmri_on_simulation(te: np.ndarray, myo_like: dict) -> None:
    """MyoQMRI's water T2 of our simulated trains (6 x 6 patches per truth)."""
    cli = MYOQMRI_VENV / "bin" / "waterT2"
    if not cli.exists():
        print("\nMyoQMRI on the simulation: skipped (not installed; bench_t2.py --myoqmri installs it)")
        return
    import nibabel as nib

    t2_true, ff_true, b1_true = simulated_grid()
    patch, n = 6, t2_true.size
    image = np.zeros((patch * 3, patch * 6, 1, te.size), np.float32)
    truth = np.full((patch * 3, patch * 6, 3), np.nan)
    myo_label = "MyoQMRI-like (ratio 1.2, fat T2 151 ms)" if MYO_PROFILE is None else "MyoQMRI's own profile + fat T2 151 ms"
    for label, kwargs in ((myo_label, myo_like), ("our default model", {})):
        # PD 10000: every train stays above MyoQMRI's default noise level (300) at int16
        signal = simulate_mese(np.full(n, 10000.0), ff_true, t2_true, b1_true, te, **kwargs)
        for k in range(n):
            r, c = divmod(k, 6)
            image[r * patch:(r + 1) * patch, c * patch:(c + 1) * patch, 0] = signal[k]
            truth[r * patch:(r + 1) * patch, c * patch:(c + 1) * patch] = (t2_true[k] * 1000, ff_true[k], b1_true[k])
        work = Path(tempfile.mkdtemp(prefix="t2_choices_myoqmri_"))
        nifti = work / "sim.nii.gz"
        nib.save(nib.Nifti1Image(np.round(image).astype(np.int16), np.diag([1.0, 1.0, 10.0, 1.0])), nifti)
        (work / "sim.json").write_text(json.dumps({"EchoTime": [round(t * 1000.0, 3) for t in te], "FourthDimension": "EchoTime"}))
        start = time.perf_counter()
        run = subprocess.run(
            ["taskset", "-c", "0", str(cli), str(nifti), "-b", "--path-is-nifti", "-t", "2"],
            cwd=work, capture_output=True, text=True, timeout=900, check=False,
        )
        maps = {key: sorted(work.rglob(f"*_{key}.nii.gz")) for key in ("T2", "FF", "B1")}
        if run.returncode != 0 or not all(maps.values()):
            print(f"\nMyoQMRI on the simulation ({label}): failed (exit {run.returncode}): {run.stdout[-400:]} {run.stderr[-400:]}")
            continue
        theirs = {k: np.asarray(nib.load(p[0]).dataobj, np.float32).reshape(image.shape[:2]) for k, p in maps.items()}
        err = theirs["T2"] - truth[..., 0]
        inner = np.zeros(image.shape[:2], bool)  # patch centres (away from any in-plane filtering at patch borders)
        for r in range(3):
            for c in range(6):
                inner[r * patch + 1:(r + 1) * patch - 1, c * patch + 1:(c + 1) * patch - 1] = True
        ok = inner & (theirs["T2"] > 0)
        by_b1 = " / ".join(f"{np.median(err[ok & (truth[..., 2] == b)]):+.2f}" for b in (0.8, 1.0, 1.1))
        by_ff = " / ".join(f"{np.median(err[ok & (truth[..., 1] == f)]):+.2f}" for f in (5.0, 20.0))
        ff_err = 100 * theirs["FF"] - truth[..., 1]
        ff_by = " / ".join(f"{np.median(ff_err[ok & (truth[..., 1] == f)]):+.2f}" for f in (5.0, 20.0))
        print(
            f"\nMyoQMRI 2.0.2 defaults on our noiseless trains simulated with {label} ({time.perf_counter() - start:.0f} s): "
            f"water T2 error median {np.median(err[ok]):+.2f} ms (min {err[ok].min():+.2f}, max {err[ok].max():+.2f}), "
            f"by B1 0.8 / 1.0 / 1.1: {by_b1}, by FF 5 / 20 %: {by_ff}; FF error at FF 5 / 20 %: {ff_by} points; "
            f"B1 error {np.median(theirs['B1'][ok] - truth[..., 2][ok]):+.3f}"
        )
        sys.stdout.flush()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-real", action="store_true")
    parser.add_argument("--skip-sim", action="store_true")
    parser.add_argument("--myoqmri", action="store_true", help="also run MyoQMRI (installed in /tmp) on one real slice per series and on the simulation")
    parser.add_argument("--skip-myoqmri-thigh", action="store_true", help="MyoQMRI on the calf slice only (the thigh slice takes minutes)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    global MYO_PROFILE
    MYO_PROFILE = myoqmri_profile()
    if MYO_PROFILE is not None:
        print(
            f"MyoQMRI 2.0.2 profile: {MYO_PROFILE.weight.size} positions, refocusing "
            f"{np.round(180 * MYO_PROFILE.refocus_scale).astype(int).tolist()} deg at excitation "
            f"{np.round(90 * MYO_PROFILE.excite_scale).astype(int).tolist()} deg; effective refocusing "
            f"width ratio {effective_width_ratio(MYO_PROFILE):.2f} (ours: "
            f"{effective_width_ratio(default_slice_profile()):.2f})"
        )
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread, {os.cpu_count()} CPUs; our fat T2 {1000 * FAT_T2_S:.0f} ms")
    if not args.skip_real:
        if not SHARED.is_dir():
            print("real data: skipped (../shared/data not found)")
        else:
            echoes, _, te = load_calf()
            # legs lie along the first axis (split near row 80); 3 central slices of 13
            name = "calf_mese_philips (first leg, rows 0-79, slices 5-7)"
            calf = real_series(name, echoes, te, (slice(0, 80), slice(None), slice(5, 8)), None)
            if args.myoqmri:
                myoqmri_real(name, te, calf, 1)
            volume, te = load_thigh()
            # legs along the second axis (as bench_t2's MyoQMRI crop); 3 central slices of 7
            name = "thigh_mese_siemens_dicom (first leg, columns 0-191, slices 2-4)"
            thigh = real_series(name, volume, te, (slice(None), slice(0, volume.shape[1] // 2), slice(2, 5)), THIGH_TR_S)
            if args.myoqmri and not args.skip_myoqmri_thigh:
                myoqmri_real(name, te, thigh, 1)
    if not args.skip_sim:
        cross_simulation(args.myoqmri)


if __name__ == "__main__":
    main()
