"""Speed and accuracy of the Dixon / MTR / B1 / two-point T2 maps.

Run: ``.venv/bin/python benchmarks/bench_dixon.py [--no-real]`` (thread count: the
usual ``OMP_NUM_THREADS`` / ``OPENBLAS_NUM_THREADS`` environment variables).

1. Synthetic 512x256x10 three-echo complex series (3 T, TE 3.45/4.60/5.75
   ms, two thighs with muscle at 0-80 % fat, subcutaneous fat, smooth B0 of
   about +-400 Hz, R2* 30-80 1/s, noise): separation time and fat-fraction
   error against the truth.
2. Real scans under ``../shared/data`` (skipped when absent): agreement with
   musclemap's reference maps and plausibility figures, one line per
   dataset and metric.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
TE_DIXON_S = (3.45e-3, 4.60e-3, 5.75e-3)


def synthetic_thighs(shape=(512, 256, 10), seed=0):
    """Two elliptical thighs: muscle blocks at 0-80 % fat, 95 % fat rim."""
    nx, ny, nz = shape
    x, y = np.meshgrid(np.arange(nx), np.arange(ny), indexing="ij")
    ff = np.zeros((nx, ny))
    body = np.zeros((nx, ny), bool)
    muscle = np.zeros((nx, ny), bool)
    for cx in (nx * 0.27, nx * 0.73):
        r = np.hypot((x - cx) / (nx * 0.22), (y - ny * 0.5) / (ny * 0.42))
        body |= r < 1.0
        inner = r < 0.82
        muscle |= r < 0.75
        levels = np.clip(np.floor((x - cx + nx * 0.18) / (nx * 0.04)), 0, 8) / 10.0
        ff = np.where(r < 1.0, np.where(inner, levels, 0.95), ff)
    # +-350 Hz inside each leg, leg means within +-100 Hz of the water
    # frequency (the prior used to pick the branch for symmetric echoes)
    b0 = 150.0 * np.sin(4 * np.pi * x / nx) + 400.0 * (y / ny - 0.5)
    r2 = 30.0 + 50.0 * y / ny
    ff3 = np.repeat(ff[..., None], nz, 2)
    body3 = np.repeat(body[..., None], nz, 2)
    muscle3 = np.repeat(muscle[..., None], nz, 2)
    b03 = b0[..., None] + 10.0 * np.arange(nz)
    r23 = np.repeat(r2[..., None], nz, 2)
    return ff3, body3, muscle3, b03, r23


def bench_synthetic():
    from bids_muscle.qmri.dixon import separate_water_fat, simulate_megre

    ff, body, muscle, b0, r2 = synthetic_thighs()
    pd = 200.0 * body
    signal = simulate_megre(pd * (1 - ff), pd * ff, TE_DIXON_S, 3.0, b0, r2, phase0_rad=0.5)
    rng = np.random.default_rng(1)
    signal = (signal + 2.0 * (rng.normal(size=signal.shape) + 1j * rng.normal(size=signal.shape))).astype(np.complex64)
    t0 = time.perf_counter()
    out = separate_water_fat(signal, TE_DIXON_S, 3.0)
    elapsed = time.perf_counter() - t0
    err = out["ff_percent"] - 100 * ff
    level_bias = [abs(float(np.mean(err[muscle & np.isclose(ff, lv)]))) for lv in np.unique(ff[muscle])]
    print(f"synthetic 512x256x10 3-echo  separation time (s)              {elapsed:.2f}")
    print(f"synthetic 512x256x10 3-echo  median |FF error| in body (pp)    {np.median(np.abs(err[body])):.3f}")
    print(f"synthetic 512x256x10 3-echo  max |mean FF error| per level (pp) {max(level_bias):.3f}")
    print(f"synthetic 512x256x10 3-echo  swapped voxels (|error| > 30 pp)  {np.mean(np.abs(err[body]) > 30):.5f}")
    print(f"synthetic 512x256x10 3-echo  median |B0 error| (Hz)            "
          f"{np.median(np.abs(out['b0_hz'][body] - b0[body])):.2f}")


def _load(path):
    import nibabel as nib

    img = nib.load(str(path))
    return np.asanyarray(img.dataobj).astype(np.float32), img.affine


def _per_slice(fn, volume):
    return np.stack([fn(volume[:, :, z]) for z in range(volume.shape[2])], axis=-1)


def _line(dataset, metric, value):
    print(f"{dataset:<24} {metric:<58} {value}")


def load_ge():
    """The GE thigh echoes with musclemap's phase on the reference grid: complex signal, mask,
    tissue part of the mask and musclemap's fat fraction."""
    d = SHARED / "thigh_dixon_ge_masked"
    names = ("40006-ORIG_DIXON_TE_345_TH", "40007-ORIG_DIXON_TE_460_TH", "40008-ORIG_DIXON_TE_575_TH")
    mag = np.stack([_load(d / f"{n}-0000.nii.gz")[0] for n in names], axis=-1)
    phase = np.stack([_load(d / "reference" / f"{n}-0001_m.nii.gz")[0] for n in names], axis=-1) * 1e-3
    mask, in_affine = _load(d / "mask.nii.gz")
    ref, ref_affine = _load(d / "reference" / "fatfraction.nii.gz")
    offset = np.round(np.linalg.solve(in_affine, ref_affine[:, 3])[:3]).astype(int)
    crop = tuple(slice(o, o + n) for o, n in zip(offset, ref.shape))
    signal = (mag * np.exp(1j * phase))[crop]
    mask = mask[crop] > 0
    rms = np.sqrt(np.mean(np.abs(signal) ** 2, axis=-1))
    tissue = mask & _per_slice(lambda s: ndimage.binary_erosion(s, iterations=2),
                               rms > 0.15 * np.percentile(rms[mask], 99))
    return signal, mask, tissue, ref


def bench_ge():
    from bids_muscle.qmri.dixon import fat_fraction_from_magnitude_echoes, separate_water_fat

    signal, mask, tissue, ref = load_ge()
    name = "thigh_dixon_ge_masked"
    variants = (
        ("single-peak, common-phase FF", dict(fat_model="single", ff_method="common_phase")),
        ("single-peak, magnitude discrimination", dict(fat_model="single")),
        ("6-peak, magnitude discrimination", dict()),
    )
    for label, kw in variants:
        t0 = time.perf_counter()
        out = separate_water_fat(signal, TE_DIXON_S, 3.0, mask=mask, **kw)
        dt = time.perf_counter() - t0
        diff = np.abs(out["ff_percent"] - ref)
        _line(name, f"[{label}] time (s)", f"{dt:.2f}")
        _line(name, f"[{label}] median |FF-ref| mask (pp)", f"{np.median(diff[mask]):.3f}")
        _line(name, f"[{label}] share |FF-ref|>20 mask", f"{np.mean(~(diff[mask] <= 20)):.4f}")
        _line(name, f"[{label}] median |FF-ref| tissue (pp)", f"{np.median(diff[tissue]):.3f}")
        _line(name, f"[{label}] share |FF-ref|>20 tissue", f"{np.mean(~(diff[tissue] <= 20)):.4f}")
    _line(name, "tissue voxels / mask voxels", f"{tissue.sum()} / {mask.sum()}")
    mag_only = fat_fraction_from_magnitude_echoes(np.abs(signal), TE_DIXON_S, 3.0, mask=tissue,
                                                  fat_model="single")["ff_percent"]
    water_dom = tissue & (ref < 45)
    _line(name, "[magnitude-only, water branch] median |FF-ref| where ref<45",
          f"{np.median(np.abs(mag_only - ref)[water_dom]):.3f}")


def load_siemens() -> np.ndarray:
    """The Siemens thigh echoes as complex images (scanner phase 0..4095 to radians)."""
    d = SHARED / "thigh_dixon_siemens"
    echoes = []
    for mag_id, ph_id, te in (("0006", "0007", 345), ("0008", "0009", 460), ("0010", "0011", 575)):
        mag, _ = _load(d / f"{mag_id}-Dixon_TE_{te}_th.nii.gz")
        ph, _ = _load(d / f"{ph_id}-Dixon_TE_{te}_th.nii.gz")
        echoes.append(mag * np.exp(1j * (ph - 2048.0) * np.pi / 2048.0))
    return np.stack(echoes, axis=-1).astype(np.complex64)


def bench_siemens():
    from bids_muscle.qmri.dixon import separate_water_fat

    signal = load_siemens()
    t0 = time.perf_counter()
    out = separate_water_fat(signal, TE_DIXON_S, 3.0)
    dt = time.perf_counter() - t0
    ff = out["ff_percent"]
    ip = np.abs(signal[..., 1])
    body = _per_slice(lambda s: ndimage.binary_fill_holes(ndimage.binary_opening(s, iterations=2)),
                      ip > 0.2 * np.percentile(ip, 99))
    dist = _per_slice(lambda s: ndimage.distance_transform_edt(s, sampling=0.8), body)
    sat = body & (dist >= 3) & (dist <= 8)
    bone = np.stack([ndimage.binary_dilation(ndimage.binary_fill_holes(ndimage.binary_closing(
        body[:, :, z] & (ip[:, :, z] < 0.35 * np.median(ip[:, :, z][body[:, :, z]])) & (dist[:, :, z] > 15),
        iterations=3)), iterations=5) for z in range(ip.shape[2])], axis=-1)
    muscle = body & (dist >= 25) & ~bone
    jump = np.abs(np.diff(out["b0_hz"], axis=0))
    pair = body[:-1] & body[1:]
    name = "thigh_dixon_siemens"
    _line(name, "time 512x256x10 (s)", f"{dt:.2f}")
    _line(name, "median FF deep muscle (%)", f"{np.median(ff[muscle]):.2f}")
    _line(name, "median FF subcutaneous band 3-8 mm (%)", f"{np.median(ff[sat]):.2f}")
    _line(name, "share of neighbour pairs with |dB0| > 217 Hz", f"{np.mean(jump[pair] > 217):.5f}")


def bench_hip():
    from bids_muscle.qmri.dixon import separate_water_fat

    signal = np.moveaxis(np.load(SHARED / "hip_megre_ismrm17" / "17.npy"), 0, -1)
    t0 = time.perf_counter()
    out = separate_water_fat(signal, (2.87e-3, 6.07e-3, 9.27e-3), 1.494, precession_clockwise=True)
    dt = time.perf_counter() - t0
    ff = out["ff_percent"]
    rms = np.sqrt(np.mean(np.abs(signal) ** 2, axis=-1))
    body = _per_slice(lambda s: ndimage.binary_fill_holes(ndimage.binary_opening(s, iterations=1)),
                      rms > 0.15 * np.percentile(rms, 99))
    dist = _per_slice(lambda s: ndimage.distance_transform_edt(s, sampling=1.5), body)
    sat = body & (dist >= 1.5) & (dist <= 6)
    r, c = np.mgrid[0:101, 0:101]
    marrow = np.repeat(((r - 45) ** 2 + (c - 55) ** 2 <= 64)[..., None], ff.shape[2], 2)
    name = "hip_megre_ismrm17"
    _line(name, "time 101x101x4 (s)", f"{dt:.2f}")
    _line(name, "median FF femoral-head marrow (%)", f"{np.median(ff[marrow]):.2f}")
    _line(name, "median FF subcutaneous band 1.5-6 mm (%)", f"{np.median(ff[sat]):.2f}")
    jump = np.abs(np.diff(out["b0_hz"], axis=0))
    _line(name, "share of neighbour pairs with |dB0| > 47 Hz", f"{np.mean(jump[body[:-1] & body[1:]] > 47):.5f}")


def bench_mtr_b1_t2():
    from bids_muscle.qmri.b1 import b1_double_angle
    from bids_muscle.qmri.mtr import mtr_percent
    from bids_muscle.qmri.se2echo import t2_two_point

    d = SHARED / "thigh_mt"
    m_off, _ = _load(d / "mt_off.nii.gz")
    m_on, _ = _load(d / "mt_on.nii.gz")
    ref, _ = _load(d / "reference" / "mtr.nii.gz")
    thighs = _per_slice(lambda s: ndimage.binary_fill_holes(ndimage.binary_opening(s, iterations=2)),
                        m_off > 0.1 * np.percentile(m_off, 99))
    mtr = mtr_percent(m_off, m_on, mask=thighs)
    ok = thighs & np.isfinite(mtr)
    _line("thigh_mt", "median |MTR-ref| in thighs (percent units)", f"{np.median(np.abs(mtr - ref)[ok]):.2e}")
    _line("thigh_mt", "defined / thigh voxels", f"{ok.sum()} / {thighs.sum()}")

    d = SHARED / "thigh_b1_dam"
    mask = _load(d / "mask.nii.gz")[0] > 0
    b1 = b1_double_angle(_load(d / "se_fa060.nii.gz")[0], _load(d / "se_fa120.nii.gz")[0], 60.0, mask=mask)
    ref, _ = _load(d / "reference" / "b1.nii.gz")
    ok = mask & np.isfinite(b1)
    _line("thigh_b1_dam", "median |B1-ref| in mask (fraction of nominal)", f"{np.median(np.abs(b1 - ref)[ok]):.2e}")
    _line("thigh_b1_dam", "defined / mask voxels", f"{ok.sum()} / {mask.sum()}")

    d = SHARED / "thigh_t2_se2echo"
    mask = _load(d / "reference" / "mask.nii.gz")[0] > 0
    out = t2_two_point(_load(d / "reference" / "t2_te16ms_r.nii.gz")[0],
                       _load(d / "reference" / "t2_te56ms_r.nii.gz")[0], 0.016, 0.056, mask=mask)
    ref, _ = _load(d / "reference" / "t2.nii.gz")
    ok = mask & np.isfinite(out["t2_s"])
    _line("thigh_t2_se2echo", "median |T2-ref| in mask (ms)", f"{np.median(np.abs(out['t2_s'] * 1e3 - ref)[ok]):.2e}")
    _line("thigh_t2_se2echo", "defined / mask voxels", f"{ok.sum()} / {mask.sum()}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-real", action="store_true", help="skip the real-data figures")
    args = parser.parse_args(argv)
    print(f"cpu cores visible: {os.cpu_count()}, python {sys.version.split()[0]}")
    bench_synthetic()
    if args.no_real:
        return
    if not SHARED.is_dir():
        print(f"real data not found at {SHARED}; skipping")
        return
    bench_ge()
    bench_siemens()
    bench_hip()
    bench_mtr_b1_t2()


if __name__ == "__main__":
    main()
