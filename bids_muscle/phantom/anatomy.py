"""Procedural thigh and calf cross-sections with ground-truth tissue properties.

Each leg is an ellipse of skin around a layer of subcutaneous fat, a thin
fascia and a muscle compartment. The compartment holds the bones (femur, or
tibia and fibula, each with cortex and marrow) and the individual muscles,
drawn as a weighted Voronoi partition around anatomically placed seeds, with
thin septa of intermuscular fat on the borders between muscles. Muscles are
healthy or fat-infiltrated (diffuse or patchy) and some have raised water T2
(oedema), so the phantom covers fat fractions from 0 to 80 %.

All quantities are arrays on one voxel grid; nothing here touches files.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from scipy import ndimage

from bids_muscle.seg.labels import label_index

#: Tissue classes of the ``desc-tissue_dseg`` truth map.
TISSUES = {
    1: "skin",
    2: "subcutaneous_fat",
    3: "fascia",
    4: "muscle",
    5: "intermuscular_fat",
    6: "cortical_bone",
    7: "bone_marrow",
}
SKIN, SUBCUT_FAT, FASCIA, MUSCLE, IM_FAT, CORTEX, MARROW = range(1, 8)

# Muscle seeds in a leg-local frame: u points laterally, v anteriorly, both
# scaled by the compartment's half axes. The third value weights the
# Voronoi cell (larger = bigger muscle).
THIGH_SEEDS = {
    "sartorius": (-0.70, 0.30, 0.55),
    "rectus_femoris": (0.00, 0.80, 0.75),
    "vastus_lateralis": (0.75, 0.15, 1.10),
    "vastus_intermedius": (0.22, 0.45, 0.75),
    "vastus_medialis": (-0.42, 0.55, 0.90),
    "adductor_magnus": (-0.30, -0.42, 1.05),
    "adductor_longus": (-0.66, -0.02, 0.60),
    "adductor_brevis": (-0.40, -0.10, 0.50),
    "gracilis": (-0.88, -0.42, 0.45),
    "biceps_femoris_long_head": (0.40, -0.72, 0.70),
    "biceps_femoris_short_head": (0.55, -0.35, 0.55),
    "semitendinosus": (-0.05, -0.85, 0.60),
    "semimembranosus": (-0.48, -0.72, 0.65),
}
CALF_SEEDS = {
    "tibialis_anterior": (0.10, 0.72, 0.75),
    "extensor_digitorum_longus": (0.50, 0.50, 0.55),
    "extensor_hallucis_longus": (0.28, 0.42, 0.40),
    "peroneus": (0.78, 0.02, 0.70),
    "tibialis_posterior": (0.12, 0.08, 0.60),
    "flexor_digitorum_longus": (-0.35, 0.00, 0.50),
    "flexor_hallucis_longus": (0.42, -0.28, 0.55),
    "soleus": (0.00, -0.45, 1.20),
    "gastrocnemius_medialis": (-0.42, -0.80, 0.85),
    "gastrocnemius_lateralis": (0.35, -0.82, 0.70),
}
# Bones in the same frame: (u, v, outer radius mm, marrow radius mm).
THIGH_BONES = ((0.08, 0.12, 14.0, 8.5),)
CALF_BONES = ((-0.18, 0.38, 13.0, 7.5), (0.52, 0.08, 6.5, 3.0))

REGION_GEOMETRY = {
    # half axes of the skin ellipse in mm (lateral, anterior), in-plane voxel
    # size in mm, default matrix, slice thickness in mm
    "thigh": {"half_axes_mm": (78.0, 72.0), "voxel_mm": 2.0, "matrix": (192, 96), "slice_mm": 8.0},
    "calf": {"half_axes_mm": (55.0, 50.0), "voxel_mm": 1.5, "matrix": (176, 88), "slice_mm": 8.0},
}


#: MTR of fat (percent), mixed with the muscle's by fat fraction.
MTR_FAT_PERCENT = 8.0


@dataclass
class RegionTruth:
    """Ground truth of one region (both legs) on a voxel grid.

    Arrays have shape (nx, ny, nz). Axis 0 runs from the subject's right to
    left, axis 1 from posterior to anterior, axis 2 from inferior to superior.
    """

    region: str
    affine: np.ndarray
    tissue: np.ndarray  # uint8, classes of TISSUES, 0 = background
    labels: np.ndarray  # int16 muscle labels (table indices), 0 elsewhere
    pd: np.ndarray  # relative proton density (water + fat), 0..1
    ff_percent: np.ndarray  # fat fraction, percent
    water_t2_s: np.ndarray  # T2 of the water component, seconds
    mtr_percent: np.ndarray  # magnetisation transfer ratio, percent
    b1: np.ndarray  # relative transmit field
    receive_bias: np.ndarray  # multiplicative receive field, ~1
    b0_hz: np.ndarray  # off-resonance, Hz
    r2star_per_s: np.ndarray  # R2* of the voxel, 1/s
    muscle_states: dict = field(default_factory=dict)  # label -> description

    @property
    def muscle_region(self) -> np.ndarray:
        """Everything inside the fascia except bone: muscles and the fat between them."""
        return (self.tissue == MUSCLE) | (self.tissue == IM_FAT)

    @property
    def imat(self) -> np.ndarray:
        """Intramuscular adipose tissue: muscle-region voxels with FF above 50 %."""
        return self.muscle_region & (self.ff_percent > 50.0)


def smooth_field(shape: tuple[int, ...], rng: np.random.Generator, scale_vox: float) -> np.ndarray:
    """Smooth random field with zero mean and unit standard deviation."""
    noise = rng.standard_normal(shape).astype(np.float32)
    sigma = [scale_vox] * 2 + [max(scale_vox / 4.0, 0.5)] * (len(shape) - 2)
    smooth = ndimage.gaussian_filter(noise, sigma=sigma, mode="reflect")
    return (smooth - smooth.mean()) / (smooth.std() + 1e-12)


def _leg_local_coordinates(x_mm, y_mm, centre, lateral_sign, half_axes, scale):
    u = lateral_sign * (x_mm - centre[0]) / (half_axes[0] * scale)
    v = (y_mm - centre[1]) / (half_axes[1] * scale)
    return u, v


def draw_region(
    region: str,
    rng: np.random.Generator,
    n_slices: int = 8,
    severity: float | None = None,
) -> RegionTruth:
    """Draw both legs of ``region`` (``"thigh"`` or ``"calf"``).

    Parameters
    ----------
    region
        ``"thigh"`` or ``"calf"``.
    rng
        Random generator; the same seed gives the same phantom.
    n_slices
        Number of axial slices.
    severity
        Share of muscles that are fat-infiltrated, 0..1. Drawn at random
        when ``None``.

    Returns
    -------
    RegionTruth
    """
    geo = REGION_GEOMETRY[region]
    seeds = THIGH_SEEDS if region == "thigh" else CALF_SEEDS
    bones = THIGH_BONES if region == "thigh" else CALF_BONES
    nx, ny = geo["matrix"]
    vox = geo["voxel_mm"]
    nz = n_slices
    # Radiological storage as scanners write it: voxel index 0 on the
    # subject's right (world x decreases with i), RAS+ world coordinates.
    affine = np.diag([-vox, vox, geo["slice_mm"], 1.0])
    affine[:3, 3] = [(nx - 1) * vox / 2.0, -(ny - 1) * vox / 2.0, -(nz - 1) * geo["slice_mm"] / 2.0]

    ii, jj = np.meshgrid(np.arange(nx), np.arange(ny), indexing="ij")
    x_mm = affine[0, 0] * ii + affine[0, 3]
    y_mm = affine[1, 1] * jj + affine[1, 3]

    if severity is None:
        severity = float(rng.uniform(0.0, 0.6))
    half = np.array(geo["half_axes_mm"]) * rng.uniform(0.9, 1.05, size=2)
    gap = rng.uniform(6.0, 14.0)
    subcut_mm = rng.uniform(6.0, 16.0)

    tissue = np.zeros((nx, ny, nz), np.uint8)
    labels = np.zeros((nx, ny, nz), np.int16)
    muscle_table = list(seeds)
    # Per-muscle state shared by both legs in spirit of symmetric disease,
    # with independent draws per side so the legs are not identical.
    states: dict[int, dict] = {}
    jitter = {}
    for side, lateral_sign in (("right", 1.0), ("left", -1.0)):
        centre_x = lateral_sign * (half[0] + gap / 2.0)
        jitter[side] = rng.normal(0.0, 0.04, size=(len(muscle_table), 2))
        for k, muscle in enumerate(muscle_table):
            index = label_index(region, muscle, side)
            infiltrated = rng.uniform() < severity
            pattern = rng.choice(["diffuse", "patchy"]) if infiltrated else "healthy"
            states[index] = {
                "muscle": muscle,
                "side": side,
                "pattern": str(pattern),
                "base_ff": float(rng.uniform(1.0, 5.0) if not infiltrated else rng.uniform(8.0, 45.0)),
                "water_t2_s": float(rng.uniform(0.029, 0.034) if rng.uniform() > 0.25 else rng.uniform(0.036, 0.048)),
                "mtr_muscle": float(rng.uniform(44.0, 50.0)),
            }
        for z in range(nz):
            taper = 1.0 - 0.06 * (z - (nz - 1) / 2.0) / max(nz - 1, 1)
            u, v = _leg_local_coordinates(x_mm, y_mm, (centre_x, 0.0), lateral_sign, half, taper)
            r = np.hypot(u, v)
            skin_out = r <= 1.0
            skin_in = r <= 1.0 - 1.5 / half.min()
            fascia_out = r <= 1.0 - subcut_mm / half.min()
            fascia_in = r <= 1.0 - (subcut_mm + 1.0 * vox) / half.min()
            sl = tissue[..., z]
            sl[skin_out] = SKIN
            sl[skin_in] = SUBCUT_FAT
            sl[fascia_out] = FASCIA
            sl[fascia_in] = MUSCLE
            comp = fascia_in
            # muscle partition in the compartment's own normalised frame
            inner = 1.0 - (subcut_mm + vox) / half.min()
            uc, vc = u / inner, v / inner
            centres = np.array([seeds[m][:2] for m in muscle_table]) + jitter[side]
            weights = np.array([seeds[m][2] for m in muscle_table])
            d = np.hypot(uc[..., None] - centres[:, 0], vc[..., None] - centres[:, 1]) / weights
            order = np.argsort(d, axis=-1)
            nearest = order[..., 0]
            d_sorted = np.take_along_axis(d, order[..., :2], axis=-1)
            septum = (d_sorted[..., 1] - d_sorted[..., 0]) < 0.022
            lab = np.array([label_index(region, m, side) for m in muscle_table], np.int16)[nearest]
            labels[..., z][comp] = lab[comp]
            sl[comp & septum] = IM_FAT
            for bu, bv, radius_mm, marrow_mm in bones:
                rb = np.hypot((u - bu) * half[0] * taper, (v - bv) * half[1] * taper)
                sl[comp & (rb <= radius_mm)] = CORTEX
                sl[comp & (rb <= marrow_mm)] = MARROW
    labels[tissue != MUSCLE] = 0
    # tiny islands left by the septa would make muscles disconnected
    for index in np.unique(labels[labels > 0]):
        comp_lab, n = ndimage.label(labels == index)
        if n > 1:
            sizes = ndimage.sum_labels(np.ones_like(comp_lab), comp_lab, range(1, n + 1))
            keep = 1 + int(np.argmax(sizes))
            drop = (comp_lab > 0) & (comp_lab != keep)
            labels[drop] = 0
            tissue[drop] = IM_FAT

    shape = (nx, ny, nz)
    ff = np.zeros(shape, np.float32)
    water_t2 = np.full(shape, 0.030, np.float32)
    mtr = np.zeros(shape, np.float32)
    pd = np.zeros(shape, np.float32)
    patches = smooth_field(shape, rng, scale_vox=3.0)
    diffuse_texture = smooth_field(shape, rng, scale_vox=2.0)
    for index, state in states.items():
        m = labels == index
        if not m.any():
            continue
        base = state["base_ff"] + 1.0 * diffuse_texture[m]
        if state["pattern"] == "patchy":
            patch = patches[m] > rng.uniform(0.3, 1.0)
            base = np.where(patch, rng.uniform(60.0, 80.0), base)
        ff[m] = np.clip(base, 0.0, 80.0)
        water_t2[m] = state["water_t2_s"]
        mtr[m] = state["mtr_muscle"]
    fat_like = np.isin(tissue, (SUBCUT_FAT, IM_FAT, MARROW))
    ff[fat_like] = np.clip(92.0 + 2.0 * diffuse_texture[fat_like], 85.0, 98.0)
    ff[tissue == SKIN] = 20.0
    ff[tissue == FASCIA] = 10.0
    ff[tissue == CORTEX] = 0.0
    pd[tissue == MUSCLE] = 0.80
    pd[fat_like] = 0.95
    pd[tissue == SKIN] = 0.6
    pd[tissue == FASCIA] = 0.5
    pd[tissue == CORTEX] = 0.02
    # mixture of water and fat: fat has slightly higher proton density
    muscle = tissue == MUSCLE
    pd[muscle] = 0.80 + 0.15 * ff[muscle] / 100.0
    mtr[muscle] = (1.0 - ff[muscle] / 100.0) * mtr[muscle] + ff[muscle] / 100.0 * MTR_FAT_PERCENT
    mtr[fat_like] = MTR_FAT_PERCENT
    mtr[tissue == SKIN] = 30.0
    mtr[tissue == FASCIA] = 35.0
    water_t2[tissue == SKIN] = 0.035
    water_t2[tissue == FASCIA] = 0.025

    body = tissue > 0
    mtr[~body] = 0.0
    water_t2[~body] = 0.0
    # transmit field: smooth, 0.7..1.2 over the body, dipping in the centre
    # of the FOV as at 3 T
    xr = (ii - nx / 2.0) / (nx / 2.0)
    yr = (jj - ny / 2.0) / (ny / 2.0)
    b1_2d = 1.15 - 0.35 * np.exp(-(xr**2 / 0.35 + yr**2 / 0.8))
    b1 = np.repeat(b1_2d[..., None], nz, axis=2).astype(np.float32)
    b1 += 0.03 * smooth_field(shape, rng, scale_vox=12.0)
    b1 = np.clip(b1, 0.7, 1.2)
    receive = (1.0 + 0.15 * smooth_field(shape, rng, scale_vox=25.0)).astype(np.float32)
    receive = np.clip(receive, 0.7, 1.3)
    b0 = (40.0 * smooth_field(shape, rng, scale_vox=20.0) + rng.uniform(-30.0, 30.0)).astype(np.float32)
    r2star = np.where(fat_like, 45.0, np.where(muscle, 35.0, 50.0)).astype(np.float32)
    r2star[tissue == CORTEX] = 300.0
    r2star[~body] = 0.0
    b1[~body] = 0.0
    b0[~body] = 0.0
    return RegionTruth(
        region=region,
        affine=affine,
        tissue=tissue,
        labels=labels,
        pd=pd,
        ff_percent=ff,
        water_t2_s=water_t2,
        mtr_percent=mtr,
        b1=b1.astype(np.float32),
        receive_bias=receive,
        b0_hz=b0,
        r2star_per_s=r2star,
        muscle_states=states,
    )


def progression_rates(truth: RegionTruth, rng: np.random.Generator) -> dict[int, float]:
    """Fat-fraction rise per visit (percentage points) of every muscle label:
    0-6 points in fat-infiltrated muscles, 0-1 point in healthy ones."""
    return {int(k): float(rng.uniform(0.0, 1.0) if state["pattern"] == "healthy" else rng.uniform(0.0, 6.0))
            for k, state in sorted(truth.muscle_states.items())}


def progressed(truth: RegionTruth, rates: dict[int, float], visits: int) -> RegionTruth:
    """``truth`` after ``visits`` follow-up intervals of fatty replacement:
    the muscle voxels of label k gain ``visits * rates[k]`` points of fat
    fraction (at most 100 %) and their MTR follows the water/fat mix as in
    :func:`draw_region`; anatomy, water T2, PD and the fields are kept."""
    if visits == 0:
        return truth
    rise = np.zeros(int(truth.labels.max()) + 1)
    for label, rate in rates.items():
        if label < rise.size:
            rise[label] = visits * rate
    muscle = (truth.tissue == MUSCLE) & (truth.labels > 0)
    ff = truth.ff_percent.copy()
    ff[muscle] = np.minimum(ff[muscle] + rise[truth.labels[muscle]], 100.0)
    old = truth.ff_percent[muscle] / 100.0
    mtr_water = (truth.mtr_percent[muscle] - old * MTR_FAT_PERCENT) / np.maximum(1.0 - old, 1e-6)
    mtr = truth.mtr_percent.copy()
    mtr[muscle] = (1.0 - ff[muscle] / 100.0) * mtr_water + ff[muscle] / 100.0 * MTR_FAT_PERCENT
    states = {k: {**v, "ff_rise_per_visit": rates.get(int(k), 0.0)} for k, v in truth.muscle_states.items()}
    return replace(truth, ff_percent=ff.astype(truth.ff_percent.dtype), mtr_percent=mtr.astype(truth.mtr_percent.dtype),
                               muscle_states=states)
