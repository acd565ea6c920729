"""Write a complete BIDS dataset of digital-phantom participants, with the truth.

Layout::

    OUT/dataset_description.json, participants.tsv (+ .json), README
    OUT/sub-01/anat/sub-01_acq-thigh_echo-<n>_MESE.nii.gz      17 echoes
    OUT/sub-01/anat/sub-01_acq-thigh_echo-<n>_part-{mag,phase}_MEGRE.nii.gz
    OUT/sub-01/anat/sub-01_acq-thigh_mt-{on,off}_MTR.nii.gz
    OUT/sub-01/anat/sub-01_acq-thigh_T1w.nii.gz
    OUT/sub-01/fmap/sub-01_acq-thigh_TB1map.nii.gz                 with b1=("tb1map",)
    OUT/sub-01/fmap/sub-01_acq-thigh_flip-<1,2>_TB1DAM.nii.gz      with b1=("tb1dam",)
    OUT/derivatives/truth/sub-01/anat/sub-01_acq-thigh_<truth maps>
    OUT/derivatives/truth/sub-01/anat/sub-01_acq-thigh_biomarkers.tsv (+ .json)

The truth is named like the app's outputs so that outputs and truth can be
matched by entities.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bids_muscle import bids
from bids_muscle.phantom import anatomy, signals
from bids_muscle.seg.labels import dseg_tsv_text, load_label_table
from bids_muscle.seg.legs import voxel_sizes
from bids_muscle.stats.biomarkers import column_descriptions, muscle_table

SITES = ("siteA", "siteB")
#: Measured B1 the phantom can add under ``fmap/`` (``generate_dataset(b1=...)``).
B1_KINDS = ("tb1map", "tb1dam")


def _sidecar(path: Path, meta: dict) -> None:
    bids.write_json_atomic(Path(str(path).replace(".nii.gz", ".json")), meta)


def _write_raw(anat: Path, entities: dict, suffix: str, data: np.ndarray, affine: np.ndarray, meta: dict, dtype=np.int16):
    path = anat / bids.build_name(entities, suffix)
    if dtype == np.int16:
        data = np.clip(np.rint(data), 0, np.iinfo(np.int16).max)
    bids.save_nifti_atomic(path, data.astype(dtype), affine)
    _sidecar(path, meta)


def _common_meta(region: str, site: str) -> dict:
    return {
        "Manufacturer": "bids_muscle digital phantom",
        "ManufacturersModelName": site,
        "MagneticFieldStrength": signals.FIELD_STRENGTH_T,
        "BodyPart": region.upper(),
        "SliceThickness": anatomy.REGION_GEOMETRY[region]["slice_mm"],
    }


def write_region(bids_dir: Path, sub: str, truth: anatomy.RegionTruth, site: str, rng: np.random.Generator,
                 session: str | None = None) -> None:
    """Raw images and truth of one region of one participant (in ``ses-<session>`` when given)."""
    region = truth.region
    anat = bids.subject_dir(bids_dir, sub, session)
    ent = {"sub": sub, "ses": session, "acq": region}
    common = _common_meta(region, site)
    aff = truth.affine

    mese, te_mese = signals.mese_images(truth, rng)
    p = signals.MESE_PROTOCOL
    for k, te in enumerate(te_mese):
        meta = {
            **common,
            "EchoTime": round(float(te), 6),
            "RepetitionTime": p["repetition_time_s"],
            "FlipAngle": 90.0,
            "RefocusingFlipAngle": p["refocusing_deg"],
            "EchoTrainLength": p["n_echoes"],
            "PulseSequenceType": "multi-echo spin echo (CPMG)",
        }
        _write_raw(anat, {**ent, "echo": k + 1}, "MESE", mese[..., k], aff, meta)

    mag, phase, te_gre = signals.megre_images(truth, rng)
    g = signals.MEGRE_PROTOCOL
    for k, te in enumerate(te_gre):
        meta = {**common, "EchoTime": round(float(te), 6), "RepetitionTime": g["repetition_time_s"], "FlipAngle": g["flip_deg"]}
        _write_raw(anat, {**ent, "echo": k + 1, "part": "mag"}, "MEGRE", mag[..., k], aff, meta)
        _write_raw(anat, {**ent, "echo": k + 1, "part": "phase"}, "MEGRE", phase[..., k], aff, {**meta, "Units": "rad"}, np.float32)

    m_off, m_on = signals.mt_images(truth, rng)
    mt_meta = {**common, "EchoTime": 0.004, "RepetitionTime": 0.05, "FlipAngle": 10.0}
    _write_raw(anat, {**ent, "mt": "off"}, "MTR", m_off, aff, {**mt_meta, "MTState": False})
    _write_raw(anat, {**ent, "mt": "on"}, "MTR", m_on, aff, {**mt_meta, "MTState": True})

    t1w = signals.t1w_image(truth, rng)
    _write_raw(anat, ent, "T1w", t1w, aff, {**common, "EchoTime": 0.012, "RepetitionTime": 0.6})

    write_truth(bids_dir / "derivatives" / "truth", sub, truth, session)


def write_b1(bids_dir: Path, sub: str, truth: anatomy.RegionTruth, site: str, kinds: tuple[str, ...],
             rng: np.random.Generator) -> None:
    """Measured B1 of one region under ``fmap/``, as a scanner would give it.

    ``tb1map``: a B1 map in percent of nominal (BIDS recommendation) on a grid
    twice as coarse in plane, the block mean of the true B1 over the body
    plus 1 % Gaussian noise, 0 outside the body. ``tb1dam``: a double-angle
    pair (60 and 120 degrees, fully relaxed, S = PD sin(B1 alpha)) on the
    image grid with the receive bias and Rician noise of SNR 100 in muscle.
    """
    unknown = set(kinds) - set(B1_KINDS)
    if unknown:
        raise ValueError(f"unknown B1 kind(s) {sorted(unknown)}; choose from {', '.join(B1_KINDS)}")
    fmap = bids.subject_dir(bids_dir, sub, None).parent / "fmap"
    ent = {"sub": sub, "acq": truth.region}
    common = _common_meta(truth.region, site)
    body = (truth.tissue > 0).astype(np.float64)
    if "tb1map" in kinds:
        nx, ny = (n - n % 2 for n in truth.b1.shape[:2])
        nz = truth.b1.shape[2]

        def blocks(a):
            return a[:nx, :ny].reshape(nx // 2, 2, ny // 2, 2, nz).sum(axis=(1, 3))

        cover = blocks(body)
        mean_b1 = blocks(truth.b1 * body) / np.maximum(cover, 1)
        measured = np.where(cover >= 2, mean_b1 * (1 + rng.normal(0.0, 0.01, mean_b1.shape)), 0.0)
        coarse = truth.affine @ np.array([[2, 0, 0, 0.5], [0, 2, 0, 0.5], [0, 0, 1, 0], [0, 0, 0, 1.0]])
        _write_raw(fmap, ent, "TB1map", np.round(100 * measured, 1), coarse,
                   {**common, "Units": "percent", "Description": "transmit field in percent of nominal (phantom)"},
                   np.float32)
    if "tb1dam" in kinds:
        clean = {a: truth.pd * signals.SIGNAL_SCALE * truth.receive_bias * np.sin(np.deg2rad(a) * truth.b1) * body
                 for a in (60.0, 120.0)}
        sigma = float(np.median(clean[60.0][truth.labels > 0]) / signals.SNR_FIRST_ECHO)
        for k, angle in enumerate((60.0, 120.0)):
            _write_raw(fmap, {**ent, "flip": k + 1}, "TB1DAM", signals.add_rician_noise(clean[angle], sigma, rng),
                       truth.affine, {**common, "FlipAngle": angle, "EchoTime": 0.004, "RepetitionTime": 7.0})


def write_truth(truth_dir: Path, sub: str, truth: anatomy.RegionTruth, session: str | None = None) -> None:
    """Ground-truth maps and masks of one region, named like the app's outputs."""
    ent = {"sub": sub, "ses": session, "acq": truth.region}
    src = ["phantom ground truth"]
    items = [
        ({**ent, "desc": "water"}, "T2map", truth.water_t2_s, {"Units": "s", "Description": "T2 of the water component"}),
        (ent, "FFmap", truth.ff_percent, {"Units": "percent", "Description": "fat fraction"}),
        (ent, "PDmap", truth.pd, {"Units": "arbitrary", "Description": "relative proton density (water + fat)"}),
        (ent, "MTRmap", truth.mtr_percent, {"Units": "percent"}),
        (ent, "TB1map", truth.b1, {"Units": "relative", "Description": "transmit field relative to nominal"}),
        (ent, "R2starmap", truth.r2star_per_s, {"Units": "1/s"}),
        ({**ent, "desc": "b0"}, "fieldmap", truth.b0_hz, {"Units": "Hz"}),
        (ent, "dseg", truth.labels.astype(np.int16), {"Description": "individual muscles, label table dseg.tsv"}),
        ({**ent, "desc": "tissue"}, "dseg", truth.tissue.astype(np.uint8), {"Description": "tissue classes, desc-tissue_dseg.tsv"}),
        ({**ent, "desc": "muscleregion"}, "mask", truth.muscle_region.astype(np.uint8), {"Description": bids.DESCRIPTIONS["muscleregion"]}),
        ({**ent, "desc": "imat"}, "mask", truth.imat.astype(np.uint8), {"Description": "muscle-region voxels with fat fraction above 50 %"}),
        ({**ent, "desc": "receive"}, "biasfield", truth.receive_bias, {"Units": "relative"}),
    ]
    for entities, suffix, data, meta in items:
        dtype = data.dtype if data.dtype.kind in "iu" else np.float32
        bids.write_derivative_image(truth_dir, entities, suffix, data.astype(dtype), truth.affine, src, meta)
    states = {str(k): v for k, v in truth.muscle_states.items()}
    bids.write_json_atomic(bids.derivative_path(truth_dir, ent, "muscles", ".json"), states)
    table, descriptions = truth_biomarkers(truth)
    sidecar = {"Sources": src, "Description": "per-muscle biomarkers of the true labels and maps", **descriptions}
    bids.write_derivative_table(truth_dir, ent, "biomarkers", bids.tsv_text(table), sidecar)


def truth_biomarkers(truth: anatomy.RegionTruth):
    """Per-muscle table of the true labels, maps, IMAT and muscle region, and its column descriptions.

    Columns are those of the app's ``_biomarkers.tsv``; the true fat
    fraction is ``ff_percent`` (the app has one column per method,
    ``ff_mese_percent`` and ``ff_dixon_percent``).
    """
    body = truth.tissue > 0
    maps = {
        "ff_percent": truth.ff_percent,
        "water_t2_ms": np.where(body, truth.water_t2_s * 1000.0, np.nan),
        "pd": truth.pd,
        "b1": truth.b1,
        "mtr_percent": truth.mtr_percent,
    }
    table = muscle_table(truth.labels, voxel_sizes(truth.affine), load_label_table(truth.region), maps,
                         imat_mask=truth.imat, muscle_region_mask=truth.muscle_region)
    descriptions = column_descriptions(maps)
    descriptions["ff_percent_mean"] = {"Description": "mean true fat fraction", "Units": "%"}
    return table, {k: v for k, v in descriptions.items() if k in table.columns}


def _label_table_all() -> str:
    lines = dseg_tsv_text("thigh").splitlines() + dseg_tsv_text("calf").splitlines()[1:]
    return "\n".join(lines) + "\n"


def generate_dataset(
    out_dir: Path,
    n_participants: int = 2,
    seed: int = 0,
    regions: tuple[str, ...] = ("thigh", "calf"),
    n_slices: int = 8,
    progress=None,
    b1: tuple[str, ...] = (),
    sessions: int = 1,
) -> Path:
    """Write a phantom BIDS dataset with ``n_participants`` to ``out_dir``.

    The same seed always gives the same dataset. ``out_dir`` must not exist
    or be empty, so nothing is ever overwritten. ``b1`` adds measured B1
    (:func:`write_b1`: ``"tb1map"``, ``"tb1dam"``) from a random stream of
    its own, so every other image is the same with or without it.

    ``sessions > 1`` writes every participant in ``ses-1 .. ses-<n>``, a
    follow-up study: the same anatomy at every visit, the fat fraction of
    every muscle rising at a rate of its own
    (:func:`bids_muscle.phantom.anatomy.progressed`) and new noise at every
    visit. The truth of each visit is under
    ``derivatives/truth/sub-<p>/ses-<s>``, so the true change of every
    muscle is known.
    """
    unknown = set(b1) - set(B1_KINDS)
    if unknown:
        raise ValueError(f"unknown B1 kind(s) {sorted(unknown)}; choose from {', '.join(B1_KINDS)}")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir}: folder exists and is not empty; choose a new folder")
    if n_participants < 1:
        raise ValueError("--participants must be at least 1")
    if sessions < 1:
        raise ValueError("--sessions must be at least 1")
    if sessions > 1 and b1:
        raise ValueError("measured B1 (--b1) is not drawn for several sessions")
    out_dir.mkdir(parents=True, exist_ok=True)
    bids.write_json_atomic(
        out_dir / "dataset_description.json",
        {
            "Name": "bids_muscle digital thigh and calf phantom",
            "BIDSVersion": "1.10.0",
            "DatasetType": "raw",
            "License": "CC0",
            "Authors": ["bids_muscle"],
            "GeneratedBy": [{"Name": "bids_muscle-phantom", "Version": bids.__version__}],
        },
    )
    bids.write_text_atomic(
        out_dir / "README",
        "Digital thigh and calf phantom made by bids_muscle-phantom "
        f"(seed {seed}). Ground truth in derivatives/truth.\n",
    )
    truth_dir = out_dir / "derivatives" / "truth"
    truth_dir.mkdir(parents=True, exist_ok=True)
    bids.write_json_atomic(truth_dir / "dataset_description.json", bids.dataset_description("phantom ground truth", out_dir))
    bids.write_text_atomic(truth_dir / "dseg.tsv", _label_table_all())
    tissue_rows = ["index\tname"] + [f"{k}\t{v}" for k, v in anatomy.TISSUES.items()]
    bids.write_text_atomic(truth_dir / "desc-tissue_dseg.tsv", "\n".join(tissue_rows) + "\n")
    bids.write_text_atomic(truth_dir / ".bidsignore", "*_FFmap.*\n*_muscles.json\n*_biasfield.*\n")

    rows = ["participant_id\tsite\tage\tsex\tgroup"]
    for p in range(n_participants):
        sub = f"{p + 1:02d}"
        rng = np.random.default_rng([seed, p])
        site = SITES[p % len(SITES)]
        severity = float(rng.uniform(0.0, 0.7))
        if sessions == 1:
            for k, region in enumerate(regions):
                truth = anatomy.draw_region(region, rng, n_slices=n_slices, severity=severity)
                write_region(out_dir, sub, truth, site, rng)
                if b1:
                    write_b1(out_dir, sub, truth, site, tuple(b1), np.random.default_rng([seed, p, 100 + k]))
        else:
            for k, region in enumerate(regions):
                first = anatomy.draw_region(region, rng, n_slices=n_slices, severity=severity)
                rates = anatomy.progression_rates(first, np.random.default_rng([seed, p, 200 + k]))
                for s in range(1, sessions + 1):
                    write_region(out_dir, sub, anatomy.progressed(first, rates, s - 1), site,
                                 np.random.default_rng([seed, p, 300 + s, k]), session=str(s))
        group = "patient" if severity > 0.2 else "control"
        rows.append(f"sub-{sub}\t{site}\t{int(rng.integers(20, 70))}\t{'MF'[int(rng.integers(2))]}\t{group}")
        if progress:
            progress(f"phantom: sub-{sub} written ({', '.join(regions)})")
    bids.write_text_atomic(out_dir / "participants.tsv", "\n".join(rows) + "\n")
    bids.write_json_atomic(
        out_dir / "participants.json",
        {
            "site": {"Description": "acquisition site"},
            "age": {"Description": "age", "Units": "year"},
            "sex": {"Description": "sex", "Levels": {"M": "male", "F": "female"}},
            "group": {"Description": "share of fat-infiltrated muscles above 20 % (patient) or not (control)"},
        },
    )
    return out_dir

