"""Accuracy and speed of the multi-echo spin echo fits (water T2, FF, B1, PD).

Synthetic part: a 192 x 384 x 7 volume with 17 echoes (echo spacing
10.9 ms, as the Siemens thigh protocol), two elliptical legs (~40 % of the
voxels), smooth B1 in [0.7, 1.2], water T2 uniform in [25, 50] ms and FF
uniform in [0, 80] % per voxel, Rician noise with SNR 100 on the first echo
of muscle. It reports the median absolute error of water T2 (where FF <=
60 %), FF and B1 against the truth, the Cramer-Rao floor of the water T2
error for the same voxels, the speed and the peak memory of the
two-component fit, for a single pass, for two passes (the second one
constrained by the smoothed B1 of the first) and for the default: MP-PCA
denoising, then two passes. Each voxel's water T2 and FF are drawn
independently here, which leaves denoising little to exploit.

Phantom part: the digital phantom (per-muscle water T2, infiltration
patterns, smooth B1) with and without denoising; the issue's accuracy
targets refer to it.

Real-data part (when ../shared/data is present): median water T2 and FF in
muscle and subcutaneous fat of the Philips calf and Siemens thigh series,
and the agreement of the fits with the Philips scanner T2 map.

``--myoqmri`` additionally installs MyoQMRI (PyPI ``myoqmri``, GPL) into a
throwaway virtual environment under /tmp, runs its water T2 fit on one thigh
slice and compares; it is never a dependency of bids_muscle.

Run: ``.venv/bin/python benchmarks/bench_t2.py [--myoqmri]``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from bids_muscle.phantom import anatomy, signals
from bids_muscle.qmri.denoise import denoise_mppca
from bids_muscle.qmri.epg import default_slice_profile, epg_cpmg
from bids_muscle.qmri.t2 import (
    FAT_T1_S,
    FAT_T2_S,
    WATER_T1_S,
    fit_t2_monoexp,
    fit_t2_single,
    fit_t2_water_fat,
    simulate_mese,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SHAPE = (192, 384, 7)
ESP_S = 0.0109
N_ECHOES = 17


def rss_mb() -> float:
    """Current resident set size (MB)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def peak_rss_mb() -> float:
    """Peak resident set size of the process so far (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6


def synthetic_volume(rng: np.random.Generator):
    """Truth maps and noisy echoes of the synthetic two-leg volume."""
    nx, ny, nz = SHAPE
    x, y = np.mgrid[:nx, :ny]
    legs = np.zeros((nx, ny), bool)
    for centre in (ny * 0.27, ny * 0.73):
        legs |= ((x - nx / 2) / 66.0) ** 2 + ((y - centre) / 72.0) ** 2 <= 1.0
    foreground = np.repeat(legs[:, :, None], nz, axis=2)
    # smooth field, rank-transformed so that B1 covers [0.7, 1.2] evenly
    smooth = ndimage.gaussian_filter(rng.normal(size=SHAPE), (30, 30, 1))
    ranks = np.argsort(np.argsort(smooth, axis=None)).reshape(SHAPE)
    b1 = 0.7 + 0.5 * ranks / (ranks.size - 1)
    water_t2 = rng.uniform(0.025, 0.050, SHAPE)
    ff = rng.uniform(0.0, 80.0, SHAPE)
    pd = np.where(foreground, 1000.0, 0.0)
    te = ESP_S * np.arange(1, N_ECHOES + 1)
    start = time.perf_counter()
    clean = simulate_mese(pd, ff, water_t2, b1, te)
    sim_s = time.perf_counter() - start
    sigma = float(np.median(clean[..., 0][foreground & (ff <= 10)])) / 100.0
    real = clean + sigma * rng.standard_normal(clean.shape, dtype=np.float32)
    noisy = np.hypot(real, sigma * rng.standard_normal(clean.shape, dtype=np.float32))
    del real
    truth = {"water_t2_s": water_t2, "ff_percent": ff, "b1": b1, "pd": pd}
    return truth, foreground, noisy, te, sigma, sim_s


def cramer_rao_mae_ms(
    truth: dict,
    selection: np.ndarray,
    te: np.ndarray,
    sigma: float,
    rng: np.random.Generator,
) -> tuple[float, float]:
    """Median absolute water T2 error (ms) of an efficient unbiased estimator.

    The Fisher information of (PD, FF, T2, B1) is computed by finite
    differences of the EPG model for a sample of the selected voxels; the
    error of each voxel is drawn from its Cramer-Rao variance. Returned for
    B1 free and for B1 known.
    """
    profile = default_slice_profile()
    index = rng.choice(np.flatnonzero(selection), 300, replace=False)
    params = np.stack(
        [truth[k].reshape(-1)[index] for k in ("pd", "ff_percent", "water_t2_s", "b1")],
        axis=1,
    )
    steps = np.array([1.0, 0.5, 2e-4, 2e-3])

    def model(theta: np.ndarray) -> np.ndarray:
        water = epg_cpmg(
            theta[:, 2], WATER_T1_S, theta[:, 3], te[0], te.size, slice_profile=profile
        )
        fat = epg_cpmg(
            FAT_T2_S, FAT_T1_S, theta[:, 3], te[0], te.size, slice_profile=profile
        )
        frac = theta[:, 1:2] / 100.0
        return theta[:, :1] * ((1 - frac) * water + frac * fat)

    jac = np.stack(
        [
            (
                model(params + np.eye(4)[i] * steps[i])
                - model(params - np.eye(4)[i] * steps[i])
            )
            / (2 * steps[i])
            for i in range(4)
        ],
        axis=2,
    )
    floors = []
    for n_params in (4, 3):
        part = jac[:, :, :n_params]
        covariance = np.linalg.inv(np.einsum("nei,nej->nij", part, part)) * sigma**2
        sd_ms = np.sqrt(covariance[:, 2, 2]) * 1000.0
        floors.append(
            float(np.median(np.abs(rng.normal(size=(200, sd_ms.size)) * sd_ms)))
        )
    return floors[0], floors[1]


def report_errors(fit: dict, truth: dict, foreground: np.ndarray) -> dict:
    low_ff = foreground & (truth["ff_percent"] <= 60.0)
    t2_err = np.abs(fit["water_t2_s"] - truth["water_t2_s"])[low_ff] * 1000.0
    return {
        "water_t2_mae_ms": float(np.nanmedian(t2_err)),
        "water_t2_bias_ms": float(
            np.nanmedian((fit["water_t2_s"] - truth["water_t2_s"])[low_ff]) * 1000.0
        ),
        "ff_mae_points": float(
            np.nanmedian(np.abs(fit["ff_percent"] - truth["ff_percent"])[foreground])
        ),
        "b1_mae": float(np.nanmedian(np.abs(fit["b1"] - truth["b1"])[foreground])),
        "b1_wrong_basin_percent": float(
            100.0 * np.mean(~(np.abs(fit["b1"] - truth["b1"])[foreground] < 0.1))
        ),
        "pd_rel_mae": float(
            np.nanmedian(np.abs(fit["pd"] / truth["pd"] - 1.0)[foreground])
        ),
        "water_t2_nan_percent": float(
            100.0 * np.mean(np.isnan(fit["water_t2_s"][low_ff]))
        ),
        "background_nan_percent": float(
            100.0 * np.mean(np.isnan(fit["ff_percent"][~foreground]))
        ),
    }


def timed(function, *args, **kwargs):
    """Run ``function``; return its result, wall and CPU seconds and the RSS before and at peak (MB).

    The peak is sampled every 5 ms by a thread, so earlier peaks of the
    process (data generation) do not hide the fit's own.
    """
    rss_before = rss_mb()
    peak = [rss_before]
    running = threading.Event()
    running.set()

    def sample() -> None:
        while running.is_set():
            peak[0] = max(peak[0], rss_mb())
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    wall, cpu = time.perf_counter(), time.process_time()
    result = function(*args, **kwargs)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    running.clear()
    sampler.join()
    return result, wall, cpu, rss_before, max(peak[0], rss_mb())


def denoised_fit(echoes, te, denoise_mask, **kwargs) -> dict:
    """Two-component fit, after MP-PCA denoising inside ``denoise_mask`` unless it is None."""
    if denoise_mask is not None:
        echoes = denoise_mppca(echoes, denoise_mask)[0]
    return fit_t2_water_fat(echoes, te, **kwargs)


def phantom_benchmark(n_participants: int = 4) -> None:
    """Errors against the digital phantom's truth, with and without denoising.

    The phantom has per-muscle water T2 (29-48 ms), FF 0-80 % (healthy,
    diffuse and patchy infiltration), B1 0.7-1.2 and SNR 100 on the first
    echo; errors are medians over the muscle voxels (water T2 where the
    true FF <= 60 %).
    """
    print(f"\ndigital phantom, {n_participants} participants x (thigh, calf), severities 0.2-0.8:")
    rows = {False: [], True: []}
    for k in range(n_participants):
        for region in ("thigh", "calf"):
            rng = np.random.default_rng(100 + k)
            severity = 0.2 + 0.6 * k / max(n_participants - 1, 1)
            truth = anatomy.draw_region(region, rng, severity=severity)
            echoes, te = signals.mese_images(truth, rng)
            muscle = truth.labels > 0
            lean = muscle & (truth.ff_percent <= 60)
            for denoise in (False, True):
                fit, wall, *_ = timed(
                    denoised_fit, echoes, te, truth.tissue > 0 if denoise else None
                )
                rows[denoise].append((
                    np.nanmedian(np.abs(fit["water_t2_s"] - truth.water_t2_s)[lean]) * 1000.0,
                    np.nanmedian(np.abs(fit["ff_percent"] - truth.ff_percent)[muscle]),
                    np.nanmedian(np.abs(fit["b1"] - truth.b1)[muscle]),
                    wall,
                ))
    for denoise, label in ((False, "no denoising"), (True, "MP-PCA (default)")):
        t2, ff, b1, wall = np.median(np.asarray(rows[denoise]), axis=0)
        worst = np.max(np.asarray(rows[denoise])[:, 0])
        print(
            f"  {label}: water T2 {t2:.2f} ms (worst volume {worst:.2f}), FF {ff:.2f} points, "
            f"B1 {b1:.3f}, {wall:.1f} s per volume (medians over volumes)"
        )


def synthetic_benchmark() -> None:
    rng = np.random.default_rng(2024)
    truth, foreground, noisy, te, sigma, sim_s = synthetic_volume(rng)
    n_fg = int(foreground.sum())
    print(
        f"synthetic volume {SHAPE} x {N_ECHOES} echoes, foreground {n_fg} voxels ({100 * n_fg / foreground.size:.0f} %)"
    )
    print(
        f"simulate_mese: {sim_s:.2f} s for {foreground.size} voxels; noise sigma {sigma:.2f} (SNR 100 on echo 1 of muscle)"
    )

    results = {}
    for label, kwargs, denoise in (
        ("one pass (b1_smoothing_voxels=None)", {"b1_smoothing_voxels": None}, False),
        (
            "two passes, the second within +-0.05 of the smoothed first-pass B1",
            {},
            False,
        ),
        ("default: MP-PCA denoising, then two passes (time includes both)", {}, True),
    ):
        fit, wall, cpu, rss_before, peak = timed(
            denoised_fit, noisy, te, foreground if denoise else None, **kwargs
        )
        errors = report_errors(fit, truth, foreground)
        print(f"\ntwo-component EPG fit, {label}; dictionary 64 T2 x 41 B1:")
        print(f"  wall {wall:.2f} s, CPU {cpu:.2f} s, {n_fg / wall:.0f} voxels/s")
        print(
            f"  RSS during the fit: peak {peak:.0f} MB, {peak - rss_before:.0f} MB above the {rss_before:.0f} MB before it (process peak {peak_rss_mb():.0f} MB)"
        )
        for key, value in errors.items():
            print(f"  {key}: {value:.4f}")
        results[label] = (errors, wall, peak)

    free, known = cramer_rao_mae_ms(
        truth, foreground & (truth["ff_percent"] <= 60), te, sigma, rng
    )
    print(
        f"\nCramer-Rao floor of the water T2 median absolute error (FF <= 60 %): {free:.2f} ms with B1 free, {known:.2f} ms with B1 known"
    )
    for label, (errors, wall, peak) in results.items():
        targets = {
            "water T2 MAE <= 0.5 ms": errors["water_t2_mae_ms"] <= 0.5,
            "FF MAE <= 1.5 points": errors["ff_mae_points"] <= 1.5,
            "B1 MAE <= 0.03": errors["b1_mae"] <= 0.03,
            "<= 10 s": wall <= 10.0,
            "<= 2 GB": peak <= 2000.0,
        }
        print(
            f"targets, {label.split(':')[0]}: "
            + ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in targets.items())
        )


def _tissue_masks(echoes: np.ndarray):
    first = echoes[..., 0]
    foreground = first > 0.1 * np.percentile(first, 99)
    decay = echoes[..., 8] / np.maximum(echoes[..., 1], 1.0)
    structure = np.ones((3, 3, 1), bool)
    muscle = ndimage.binary_erosion(foreground & (decay < 0.3), structure)
    fat = ndimage.binary_erosion(foreground & (decay > 0.6), structure)
    return foreground, muscle, fat


def load_calf():
    import nibabel as nib

    data = np.asarray(
        nib.load(SHARED / "calf_mese_philips" / "T2data.nii.gz").dataobj,
        dtype=np.float32,
    )
    images = data.reshape(data.shape[0], data.shape[1], -1, order="F")
    echoes = images[..., :221].reshape(data.shape[0], data.shape[1], 13, 17)
    return echoes, images[..., 221:], 0.0076 * np.arange(1, 18)


def load_thigh():
    import pydicom

    datasets = [
        pydicom.dcmread(p)
        for p in sorted((SHARED / "thigh_mese_siemens_dicom").glob("*.dcm"))
    ]

    def position(ds) -> float:
        orientation = np.asarray(ds.ImageOrientationPatient, dtype=float)
        return float(
            np.dot(
                np.cross(orientation[:3], orientation[3:]),
                np.asarray(ds.ImagePositionPatient, dtype=float),
            )
        )

    positions = sorted({round(position(ds), 3) for ds in datasets})
    echo_times = sorted({float(ds.EchoTime) for ds in datasets})
    volume = np.zeros(
        (datasets[0].Rows, datasets[0].Columns, len(positions), len(echo_times)),
        np.float32,
    )
    for ds in datasets:
        volume[
            :,
            :,
            positions.index(round(position(ds), 3)),
            echo_times.index(float(ds.EchoTime)),
        ] = ds.pixel_array
    return volume, np.asarray(echo_times) / 1000.0


def real_data_benchmark() -> dict | None:
    if not SHARED.is_dir():
        print("\nreal data: skipped (../shared/data not found)")
        return None
    results = {}
    echoes, scanner_ms, te = load_calf()
    foreground, muscle, fat = _tissue_masks(echoes)
    fit, wall, _, _, _ = timed(denoised_fit, echoes, te, foreground, mask=foreground)
    single = fit_t2_single(echoes, te, mask=foreground)["t2_s"] * 1000.0
    mono_all = (
        fit_t2_monoexp(echoes, te, mask=foreground, drop_first=False)["t2_s"] * 1000.0
    )
    valid = foreground & (scanner_ms > 0) & (scanner_ms < 200)
    print(
        f"\ncalf_mese_philips (13 slices, {foreground.sum()} voxels fitted in {wall:.2f} s; muscle {muscle.sum()}, fat {fat.sum()} voxels):"
    )
    print(
        f"  median water T2 in muscle {np.nanmedian(fit['water_t2_s'][muscle]) * 1000:.1f} ms"
    )
    print(
        f"  median FF: muscle {np.nanmedian(fit['ff_percent'][muscle]):.1f} %, subcutaneous fat {np.nanmedian(fit['ff_percent'][fat]):.1f} %"
    )
    print(f"  median B1 in muscle {np.nanmedian(fit['b1'][muscle]):.2f}")
    for name, ours in (
        ("single-component EPG T2", single),
        ("mono-exponential T2 (all echoes)", mono_all),
    ):
        both = valid & np.isfinite(ours)
        in_muscle = both & muscle
        print(
            f"  {name} vs scanner T2 map: bias {np.median(ours[both] - scanner_ms[both]):+.1f} ms (muscle {np.median(ours[in_muscle] - scanner_ms[in_muscle]):+.1f} ms), "
            f"r = {np.corrcoef(ours[both], scanner_ms[both])[0, 1]:.3f}"
        )
    results["calf"] = fit

    volume, te_thigh = load_thigh()
    foreground, muscle, fat = _tissue_masks(volume)
    fit, wall, _, _, _ = timed(denoised_fit, volume, te_thigh, foreground, mask=foreground)
    single = fit_t2_single(volume, te_thigh, mask=muscle)["t2_s"]
    mono = fit_t2_monoexp(volume, te_thigh, mask=muscle)["t2_s"]
    print(
        f"\nthigh_mese_siemens_dicom (7 slices, {foreground.sum()} voxels fitted in {wall:.2f} s; muscle {muscle.sum()}, fat {fat.sum()} voxels):"
    )
    print(
        f"  median water T2 in muscle {np.nanmedian(fit['water_t2_s'][muscle]) * 1000:.1f} ms"
    )
    print(
        f"  median FF: muscle {np.nanmedian(fit['ff_percent'][muscle]):.1f} %, subcutaneous fat {np.nanmedian(fit['ff_percent'][fat]):.1f} %"
    )
    print(f"  median B1 in muscle {np.nanmedian(fit['b1'][muscle]):.2f}")
    print(
        f"  median T2 in muscle: single-component EPG {np.nanmedian(single) * 1000:.1f} ms, mono-exponential {np.nanmedian(mono) * 1000:.1f} ms"
    )
    results["thigh"] = (volume, te_thigh, foreground, muscle, fit)
    return results


def myoqmri_comparison(thigh) -> None:
    """Install MyoQMRI in /tmp and compare its water T2 on one thigh slice."""
    if thigh is None:
        print("\nMyoQMRI: skipped (no real data)")
        return
    volume, te, _, muscle, fit = thigh
    venv = Path(tempfile.gettempdir()) / "bids_muscle_myoqmri_venv"
    water_t2_cli = venv / "bin" / "waterT2"
    try:
        if not water_t2_cli.exists():
            print("\nMyoQMRI: installing into", venv)
            subprocess.run(
                [sys.executable, "-m", "venv", str(venv)], check=True, timeout=120
            )
            subprocess.run(
                [str(venv / "bin" / "pip"), "install", "-q", "myoqmri"],
                check=True,
                timeout=600,
                capture_output=True,
            )
        import nibabel as nib

        work = Path(tempfile.mkdtemp(prefix="bench_t2_myoqmri_"))
        nifti = work / "mese.nii.gz"
        # one slice of one leg keeps its run to a few minutes
        slice_index, columns = 3, slice(0, volume.shape[1] // 2)
        crop = volume[:, columns, slice_index : slice_index + 1]
        nib.save(
            nib.Nifti1Image(
                crop.astype(np.int16), np.diag([1.1667, 1.1667, 10.0, 1.0])
            ),
            nifti,
        )
        header = {
            "EchoTime": [round(t * 1000.0, 3) for t in te],
            "FourthDimension": "EchoTime",
        }
        (work / "mese.json").write_text(json.dumps(header))
        start = time.perf_counter()
        run = subprocess.run(
            [str(water_t2_cli), str(nifti), "-b", "--path-is-nifti", "-t", "2"],
            check=False,
            cwd=work,
            capture_output=True,
            text=True,
            timeout=900,
        )
        elapsed = time.perf_counter() - start
        maps = {
            key: sorted(work.rglob(f"*_{key}.nii.gz")) for key in ("T2", "FF", "B1")
        }
        if run.returncode != 0 or not all(maps.values()):
            print(
                f"\nMyoQMRI: skipped (run failed, exit {run.returncode}): {run.stdout[-300:]} {run.stderr[-300:]}"
            )
            return
        theirs = {
            key: np.asarray(nib.load(paths[0]).dataobj, dtype=np.float32).reshape(
                crop.shape[:2]
            )
            for key, paths in maps.items()
        }
        ours = {
            "T2": fit["water_t2_s"][:, columns, slice_index] * 1000.0,
            "FF": fit["ff_percent"][:, columns, slice_index],
            "B1": fit["b1"][:, columns, slice_index],
        }
        theirs["FF"] = theirs["FF"] * 100.0  # MyoQMRI stores a fraction
        region = (
            muscle[:, columns, slice_index]
            & np.isfinite(ours["T2"])
            & np.isfinite(ours["B1"])
            & (theirs["T2"] > 0)
        )
        print(
            f"\nMyoQMRI (one thigh slice of one leg, {crop[..., 0].size} voxels, {elapsed:.0f} s with 2 processes, its defaults):"
        )
        for key, unit in (("T2", "ms"), ("FF", "%"), ("B1", "")):
            a, b = ours[key][region], theirs[key][region]
            print(
                f"  {key} in muscle ({region.sum()} voxels): median MyoQMRI {np.median(b):.2f}{unit}, bids_muscle {np.median(a):.2f}{unit}, "
                f"median difference {np.median(a - b):+.2f}{unit}, r = {np.corrcoef(a, b)[0, 1]:.3f}"
            )
        shutil.rmtree(work, ignore_errors=True)
    except (subprocess.SubprocessError, OSError) as error:
        print(f"\nMyoQMRI: skipped ({error})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--myoqmri",
        action="store_true",
        help="also install and run MyoQMRI for comparison",
    )
    parser.add_argument("--skip-real", action="store_true", help="synthetic part only")
    args = parser.parse_args()
    import torch

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} worker threads, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    synthetic_benchmark()
    phantom_benchmark()
    results = None if args.skip_real else real_data_benchmark()
    if args.myoqmri:
        myoqmri_comparison(None if results is None else results["thigh"])
    else:
        print(
            "\nMyoQMRI: skipped (run with --myoqmri to install it in /tmp and compare)"
        )


if __name__ == "__main__":
    main()
