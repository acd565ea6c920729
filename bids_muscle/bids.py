"""Everything that knows BIDS naming: input queries, derivative names, sidecars.

Inputs are found with pybids per participant, session and region. The region
(``thigh`` or ``calf``) comes from the ``acq-`` entity. Outputs follow the
BIDS-derivatives layout described in ``docs/outputs.md``; every image is
written with a JSON sidecar holding ``Sources`` as BIDS URIs, and all writes
are atomic (temporary name, then rename) so an interrupted run never leaves a
half-written file under a final name.
"""

from __future__ import annotations

import filecmp
import functools
import json
import re
import os
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nb
import numpy as np
from bids.layout import Query

from bids_muscle import __version__
from bids_muscle.preflight import ImageInfo, InputError, check_dataset, check_image, number

REGIONS = ("thigh", "calf")

#: BIDS entity order used to build file names (subset relevant here).
ENTITY_ORDER = ("sub", "ses", "acq", "rec", "run", "echo", "flip", "mt", "part", "desc")
#: Suffixes written by bids_muscle that BIDS does not define.
CUSTOM_SUFFIXES = ("FFmap", "biomarkers", "slices", "fieldmap")

#: Every ``desc-`` value the app writes, with what it means.
DESCRIPTIONS = {
    "water": "Water component of a two-component (water + fat) EPG fit of the multi-echo spin echo",
    "epg": "Estimated by EPG dictionary matching of the multi-echo spin echo",
    "mese": "Fat fraction from the two-component EPG fit of the multi-echo spin echo",
    "dixon": "Fat fraction from water-fat separation of a multi-echo gradient echo (Dixon)",
    "monoexp": "Mono-exponential fit of the multi-echo spin echo",
    "n4": "Bias-field corrected with N4 (SimpleITK)",
    "muscleregion": "Muscle region: everything inside the fascia except bone (muscles and intramuscular fat)",
    "imat": "Intramuscular adipose tissue inside the muscle region",
    "b0": "Off-resonance field map in Hz from water-fat separation",
    "twopoint": "Two-point (2-echo) spin-echo T2 and its signal extrapolated to t=0",
    "dam": "Transmit field from the double-angle method",
}


# ---------------------------------------------------------------- names


def build_name(entities: dict, suffix: str, extension: str = ".nii.gz") -> str:
    """File name from short entity keys in BIDS order, e.g. ``sub-01_acq-thigh_T2map.nii.gz``."""
    parts = []
    for key in ENTITY_ORDER:
        value = entities.get(key)
        if value not in (None, ""):
            parts.append(f"{key}-{value}")
    return "_".join(parts + [suffix]) + extension


def subject_dir(out_dir: Path, sub: str, ses: str | None) -> Path:
    path = Path(out_dir) / f"sub-{sub}"
    if ses:
        path = path / f"ses-{ses}"
    return path / "anat"


def report_path(out_dir: Path, sub: str, ses: str | None) -> Path:
    """The participant report ``sub-<p>[_ses-<s>].html`` at the top of the derivatives."""
    return Path(out_dir) / (f"sub-{sub}" + (f"_ses-{ses}" if ses else "") + ".html")


def derivative_path(out_dir: Path, entities: dict, suffix: str, extension: str = ".nii.gz") -> Path:
    """Where a derivative of ``entities`` (short keys) goes under ``out_dir``."""
    return subject_dir(out_dir, entities["sub"], entities.get("ses")) / build_name(entities, suffix, extension)


def bids_uri(path: Path, dataset_root: Path, dataset_name: str = "raw") -> str:
    """BIDS URI ``bids:<name>:<relative path>`` of a file inside a dataset.

    The file's own name is kept when it is a symbolic link (a DataLad or
    git-annex dataset, images linked from elsewhere): only the folders are
    resolved.
    """
    path, root = Path(os.path.abspath(path)), Path(os.path.abspath(dataset_root))
    try:
        rel = path.relative_to(root)
    except ValueError:  # reached through another spelling of the folders
        rel = (path.parent.resolve() / path.name).relative_to(root.resolve())
    return f"bids:{dataset_name}:{rel.as_posix()}"


# ---------------------------------------------------------------- writing


def _atomic_target(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name.split('.')[0]}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def _replace_if_changed(tmp: Path, path: Path) -> None:
    """Move ``tmp`` onto ``path`` atomically, unless ``path`` already holds the same bytes:
    an unchanged output keeps its time stamp, so a rerun changes nothing and what
    depends on it stays cached."""
    if path.is_file() and filecmp.cmp(tmp, path, shallow=False):
        return
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


#: Names of :func:`_atomic_target` (``tempfile.mkstemp`` adds 8 characters).
_TEMPORARY = re.compile(r"^\.[^.]+\.[A-Za-z0-9_]{8}\.tmp(\.|$)")


@contextmanager
def _atomic(path: Path):
    """A temporary name beside ``path`` to write to, moved onto ``path`` at the
    end; on any error (a full disk) it is removed, ``path`` is left as it was
    and the error names the folder."""
    tmp = None
    try:
        tmp = _atomic_target(path)
        yield tmp
        _replace_if_changed(tmp, path)
    except OSError as err:
        raise OSError(err.errno, f"{path.parent}: cannot write {path.name} ({err.strerror or err})") from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def remove_temporaries(out_dir: Path) -> list[Path]:
    """Remove the temporary files a killed run left under ``out_dir`` (call it
    holding the folder's lock: no other run writes there)."""
    found = [p for p in Path(out_dir).rglob(".*.tmp*") if p.is_file() and _TEMPORARY.match(p.name)]
    for path in found:
        path.unlink(missing_ok=True)
    return found


def write_text_atomic(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` via a temporary file and an atomic rename (untouched when unchanged)."""
    path = Path(path)
    with _atomic(path) as tmp:
        tmp.write_text(text)
    return path


def write_json_atomic(path: Path, data: dict) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj)}")


def save_nifti_atomic(path: Path, data: np.ndarray, affine: np.ndarray, header=None) -> Path:
    """Save an array as NIfTI through a temporary file and an atomic rename (untouched when unchanged)."""
    path = Path(path)
    img = nb.Nifti1Image(np.asarray(data), affine, header)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    with _atomic(path) as tmp:
        nb.save(img, tmp)
    return path


def write_derivative_image(
    out_dir: Path,
    entities: dict,
    suffix: str,
    data: np.ndarray,
    affine: np.ndarray,
    sources: list[str],
    metadata: dict,
) -> Path:
    """Write one derivative image and its JSON sidecar (``Sources`` + metadata)."""
    path = derivative_path(out_dir, entities, suffix)
    save_nifti_atomic(path, data, affine)
    sidecar = {"Sources": list(sources), **metadata}
    write_json_atomic(path.with_name(path.name.replace(".nii.gz", ".json")), sidecar)
    return path


def tsv_text(table) -> str:
    """A pandas table as BIDS TSV text: tab-separated, ``n/a`` for missing values, no index."""
    return table.to_csv(sep="\t", index=False, na_rep="n/a", float_format="%.6g")


def write_derivative_table(out_dir: Path, entities: dict, suffix: str, tsv_text: str, sidecar: dict) -> Path:
    """Write one derivative TSV table and its JSON sidecar (column descriptions)."""
    path = derivative_path(out_dir, entities, suffix, ".tsv")
    write_text_atomic(path, tsv_text)
    write_json_atomic(path.with_suffix(".json"), sidecar)
    return path


def dataset_description(name: str, bids_dir: Path | None, container: dict | None = None) -> dict:
    desc = {
        "Name": name,
        "BIDSVersion": "1.10.0",
        "DatasetType": "derivative",
        "GeneratedBy": [
            {
                "Name": "bids_muscle",
                "Version": __version__,
                "CodeURL": "https://github.com/bids-muscle/bids_muscle",
            }
        ],
        "HowToAcknowledge": "Cite bids_muscle and the methods listed in the participant reports.",
    }
    if container:
        desc["GeneratedBy"][0]["Container"] = container
    if bids_dir is not None:
        desc["DatasetLinks"] = {"raw": Path(bids_dir).resolve().as_uri()}
    return desc


def container_info() -> dict | None:
    """Container type and tag when running inside Docker or Singularity/Apptainer."""
    if os.environ.get("SINGULARITY_NAME") or os.environ.get("APPTAINER_NAME"):
        return {"Type": "singularity", "Tag": os.environ.get("SINGULARITY_NAME") or os.environ.get("APPTAINER_NAME")}
    if Path("/.dockerenv").exists():
        return {"Type": "docker", "Tag": f"bids_muscle:{__version__}"}
    return None


def init_derivatives(out_dir: Path, bids_dir: Path) -> None:
    """Create the dataset-level files of the derivatives folder (idempotent).

    A folder whose ``dataset_description.json`` says another application made
    it is refused (:class:`InputError`): nothing of it is overwritten. An
    earlier version of bids_muscle is taken over.
    """
    out_dir = Path(out_dir)
    described = out_dir / "dataset_description.json"
    if described.is_file():
        try:
            made_by = json.loads(described.read_text()).get("GeneratedBy") or [{}]
            name = made_by[0].get("Name") if isinstance(made_by, list) and isinstance(made_by[0], dict) else None
        except (ValueError, AttributeError):
            name = "an unknown application (the file is not a JSON object)"
        if name != "bids_muscle":
            raise InputError(f"{described}: the output folder holds derivatives of {name or 'another application'}; "
                             "choose another output folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(
        out_dir / "dataset_description.json",
        dataset_description("bids_muscle derivatives", bids_dir, container_info()),
    )
    write_text_atomic(out_dir / ".bidsignore", "".join(f"*_{s}.*\n" for s in CUSTOM_SUFFIXES) + "group/\nlogs/\n*.html\n")
    lines = ["desc_id\tdescription"] + [f"{k}\t{v}" for k, v in DESCRIPTIONS.items()]
    write_text_atomic(out_dir / "descriptions.tsv", "\n".join(lines) + "\n")


def write_dseg_table(out_dir: Path, desc: str, table_text: str) -> Path:
    """Dataset-level label table ``desc-<desc>_dseg.tsv``."""
    return write_text_atomic(Path(out_dir) / f"desc-{desc}_dseg.tsv", table_text)


# ---------------------------------------------------------------- inputs


@dataclass
class Series:
    """One acquisition of several images with its echo times or roles."""

    files: list[Path]
    metadata: list[dict]
    echo_times_s: list[float] = field(default_factory=list)


@dataclass
class RegionInputs:
    """Everything bids_muscle uses for one participant, session and region."""

    subject: str
    session: str | None
    region: str
    mese: Series | None = None
    megre_mag: Series | None = None
    megre_phase: Series | None = None
    mt_on: Path | None = None
    mt_off: Path | None = None
    t1w: Path | None = None
    dixon_water: Path | None = None
    dixon_fat: Path | None = None
    pdw: Path | None = None
    t2w: Path | None = None
    tb1map: Path | None = None
    tb1map_units: str | None = None  # ``Units`` of the TB1map sidecar (BIDS recommends percent)
    b1_dam: Series | None = None  # double-angle pair, sorted by FlipAngle
    field_strength_t: float | None = None
    refocusing_flip_angle_deg: float | None = None
    #: Region probabilities when the region was not named by ``acq-`` but
    #: predicted by the region classifier (None otherwise).
    region_probabilities: dict | None = None

    @property
    def entities(self) -> dict:
        return {"sub": self.subject, "ses": self.session, "acq": self.region}

    @property
    def anatomical_reference(self) -> Path | None:
        """Image the muscles are segmented on and N4 is shown on, or None.

        In order of preference:

        1. ``T1w``: the anatomical contrast of muscle protocols (fat bright,
           muscle grey, fascia and cortical bone dark), usually the finest
           grid of the session;
        2. Dixon water (``rec-water_T1w``): the same geometry without fat, so
           muscle borders against infiltrated fat stay visible;
        3. ``PDw``, then ``T2w``: dedicated anatomical images, finer in plane
           and thinner in slice than the quantitative series. PDw comes first
           because its muscle / fat / fascia contrast is the closer to T1w
           and its SNR the higher; T2w in muscle protocols is often fat
           suppressed (STIR or SPAIR, for oedema), which hides the fat
           septa and the subcutaneous fat that bound the muscles;
        4. the first MESE echo (TE about 10 ms: proton-density like, but on
           the coarser quantitative grid), then MEGRE echo 1, then MT-off.

        A region with only a double-angle B1 pair (``fmap``) has no
        reference: the flip-angle images are low-resolution,
        T1-saturated gradient echoes of unknown contrast on which neither
        N4 nor a segmentation is meaningful, so such a region gets its
        ``desc-dam_TB1map`` only.
        """
        for candidate in (
            self.t1w,
            self.dixon_water,
            self.pdw,
            self.t2w,
            self.mese.files[0] if self.mese else None,
            self.megre_mag.files[0] if self.megre_mag else None,
            self.mt_off,
        ):
            if candidate is not None:
                return candidate
        return None

    @property
    def b1_prior(self) -> tuple[str, list[Path]] | None:
        """Measured B1 the EPG fits of the MESE are constrained by: ``("tb1map", [file])``
        for a B1 map of the dataset, else ``("dam", [alpha, 2 alpha])`` for the
        app's own double-angle map, else None. The dataset's map comes first:
        it is what the dataset declares the transmit field to be (often the
        scanner's own B1 map, or one made from the TB1DAM pair beside it)."""
        if self.tb1map is not None:
            return "tb1map", [self.tb1map]
        if self.b1_dam is not None:
            return "dam", list(self.b1_dam.files)
        return None

    def all_files(self) -> list[Path]:
        files = []
        for series in (self.mese, self.megre_mag, self.megre_phase):
            if series:
                files += series.files
        files += self.b1_dam.files if self.b1_dam else []
        files += [f for f in (self.mt_on, self.mt_off, self.t1w, self.dixon_water, self.dixon_fat, self.pdw, self.t2w,
                              self.tb1map) if f]
        return files


def region_of(acquisition: str | None, allowed: tuple[str, ...]) -> str | None:
    """Region named by an ``acq-`` label (``thigh``, ``calf``, or containing either)."""
    if not acquisition:
        return allowed[0] if len(allowed) == 1 else None
    low = acquisition.lower()
    for region in REGIONS:
        if region in low:
            return region
    return None


def load_layout(bids_dir: Path, validate: bool = True, exclude=()):
    """Index ``bids_dir`` with pybids without writing anything into it.

    ``exclude`` holds ``(participant, session or None)`` pairs left out of the
    index (those whose sidecars :func:`bids_muscle.preflight.check_sidecars`
    found broken: pybids would fail on the whole dataset).
    """
    from bids.layout import BIDSLayout, BIDSLayoutIndexer
    from bids.layout.validation import DEFAULT_LOCATIONS_TO_IGNORE

    check_dataset(bids_dir)
    ignore = [*DEFAULT_LOCATIONS_TO_IGNORE] + [
        re.compile("^/" + re.escape(f"sub-{sub}" + (f"/ses-{ses}" if ses else "")) + "(/|$)") for sub, ses in exclude]
    return BIDSLayout(str(bids_dir), validate=validate, derivatives=False,
                      indexer=BIDSLayoutIndexer(validate=validate, ignore=ignore))


def _metadata(path: Path, layout) -> dict:
    return layout.get_metadata(str(path))


@functools.lru_cache(maxsize=1024)
def _checked_image(path: str, mtime_ns: int, size: int) -> ImageInfo:
    return check_image(Path(path))


def _image(path: Path) -> ImageInfo:
    """:func:`bids_muscle.preflight.check_image` of ``path``, read once per version of the file."""
    try:
        stat = Path(path).stat()
    except OSError as err:
        raise InputError(f"{path}: cannot be read ({err.strerror})") from None
    return _checked_image(str(path), stat.st_mtime_ns, stat.st_size)


def _echo_time(value, path: Path, what: str) -> float:
    return number({"EchoTime": value}, "EchoTime", path, what, low=0.0, high=1.0, unit="s", milliseconds=True)


def _echo_series(files, layout, what: str, min_echoes: int = 1) -> Series:
    """Sort echo files by EchoTime and check metadata, images and grids."""
    entries, by_index = [], {}
    for f in files:
        path = Path(f.path)
        index = f.entities.get("echo")
        index = int(index) if str(index).isdigit() else index  # echo-2 and echo-02 are the same echo
        if index is not None and index in by_index:
            raise InputError(f"{path}: echo-{index} of {what} is also {by_index[index].name}")
        by_index[index] = path
        meta = _metadata(path, layout)
        te = meta.get("EchoTime")
        if te is None:
            raise InputError(f"{path}: EchoTime missing from the sidecar ({what})")
        shape = _image(path).shape
        volumes = shape[3] if len(shape) == 4 else 1
        if isinstance(te, list):
            if volumes < 2 or len(te) != volumes:
                raise InputError(f"{path}: EchoTime lists {len(te)} values but the image has shape {shape}")
            for k, te_k in enumerate(te):
                te_k = _echo_time(te_k, path, what)
                entries.append((te_k, path, dict(meta, EchoTime=te_k, VolumeIndex=k)))
            continue
        if volumes > 1:
            raise InputError(f"{path}: {what} image of {volumes} volumes has a single EchoTime; list one per volume")
        entries.append((_echo_time(te, path, what), path, meta))
    entries.sort(key=lambda e: e[0])
    tes = [e[0] for e in entries]
    for (te, first, _), (repeated, second, _) in zip(entries, entries[1:]):
        if repeated == te:
            raise InputError(f"{second}: repeated EchoTime values in {what}: {te:g} s, as in {first.name}")
    images = {p: _image(p) for _, p, _ in entries}
    shapes = [info.shape[:3] for info in images.values()]
    common = max(shapes, key=shapes.count)
    for p, info in images.items():
        if info.shape[:3] != common:
            raise InputError(f"{p}: echoes of {what} have different shapes ({info.shape[:3]} here, {common} in others)")
    # the grid most echoes share is the reference; name an echo off it
    reference = max(images.values(), key=lambda a: sum(a.same_grid(b) for b in images.values()))
    for p, info in images.items():
        if not info.same_grid(reference):
            raise InputError(f"{p}: echo of {what} on another grid than the other echoes (the affines differ)")
    if len(entries) < min_echoes:
        raise InputError(f"{entries[0][1]}: {what} needs at least {min_echoes} echoes, found {len(entries)}")
    return Series(files=[e[1] for e in entries], metadata=[e[2] for e in entries], echo_times_s=tes)


def _single(files, what: str) -> Path | None:
    if not files:
        return None
    if len(files) > 1:
        names = ", ".join(Path(f.path).name for f in files)
        raise InputError(f"{Path(files[0].path).parent}: several {what} images match ({names}); use --bids-filter-file or run-")
    path = Path(files[0].path)
    shape = _image(path).shape
    if len(shape) == 4 and shape[3] > 1:
        raise InputError(f"{path}: {what} must be a 3D image, got shape {shape}")
    return path


def _double_angle_pair(files, layout) -> Series:
    """The two TB1DAM images, sorted by nominal FlipAngle, which must double."""
    if len(files) != 2:
        raise InputError(f"{files[0].path}: the double-angle B1 map needs exactly two TB1DAM images, found {len(files)}")
    entries = []
    for f in files:
        angle = number(_metadata(Path(f.path), layout), "FlipAngle", Path(f.path), "double-angle B1",
                       low=0.0, high=360.0, unit="degrees")
        if angle is None:
            raise InputError(f"{f.path}: FlipAngle missing from the sidecar (double-angle B1)")
        entries.append((angle, Path(f.path)))
    entries.sort()
    (a1, p1), (a2, p2) = entries
    if abs(a2 - 2 * a1) > 0.5:
        raise InputError(f"{p2}: double-angle B1 needs flip angles alpha and 2 alpha, got {a1:g} and {a2:g}")
    shapes = {_image(p1).shape[:3], _image(p2).shape[:3]}
    if len(shapes) > 1:
        raise InputError(f"{p1}: the two TB1DAM images differ in shape {sorted(shapes)}")
    return Series(files=[p1, p2], metadata=[{"FlipAngle": a1}, {"FlipAngle": a2}])


def collect_inputs(
    layout,
    subject: str,
    session: str | None,
    regions: tuple[str, ...] = REGIONS,
    filters: dict | None = None,
    classify: Callable[[Path], tuple[str, dict]] | None = None,
) -> list[RegionInputs]:
    """All usable inputs of one participant (and session), grouped by region.

    Files without ``acq-<region>`` belong to the only requested region; with
    several requested, ``classify(anatomical_reference)`` (the region
    classifier) decides, and without it that is an error.

    Raises
    ------
    InputError
        For missing or inconsistent metadata, naming the offending file.
    """
    base = {"subject": subject, "extension": [".nii", ".nii.gz"], "return_type": "object"}
    if session:
        base["session"] = session
    extra = dict(filters or {})

    def query(**kw):
        return layout.get(**base, **{**kw, **extra.get(kw.get("suffix", "").lower(), {})})

    anat_files = query(datatype="anat") + query(datatype="fmap")
    acquisitions = sorted({f.entities.get("acquisition") or "" for f in anat_files})
    out = []
    seen_regions = set()
    for acq in acquisitions:
        region = region_of(acq or None, regions)
        pending = region is None and not acq
        if pending and classify is None:
            raise InputError(
                f"sub-{subject}: files without acq-<region> and several regions requested; "
                "name them acq-thigh or acq-calf, or pass --regions"
            )
        if pending:
            region = regions[0]  # until the classifier has seen the image
        if region not in regions:
            continue
        acq_q = {"acquisition": acq if acq else Query.NONE}
        rin = RegionInputs(subject=subject, session=session, region=region)
        mese = query(suffix="MESE", **acq_q)
        if mese:
            rin.mese = _echo_series(mese, layout, "MESE", min_echoes=2)
            first = rin.mese.files[0]
            refocusing = number(rin.mese.metadata[0], "RefocusingFlipAngle", first, "MESE", low=0.0, high=180.0,
                                unit="degrees")
            rin.refocusing_flip_angle_deg = 180.0 if refocusing is None else refocusing
            number(rin.mese.metadata[0], "RepetitionTime", first, "MESE", low=0.0, high=100.0, unit="s",
                   milliseconds=True)
        megre = query(suffix="MEGRE", **acq_q)
        if megre:
            mag = [f for f in megre if f.entities.get("part") in (None, "mag")]
            phase = [f for f in megre if f.entities.get("part") == "phase"]
            if mag:
                rin.megre_mag = _echo_series(mag, layout, "MEGRE magnitude")
            if phase:
                rin.megre_phase = _echo_series(phase, layout, "MEGRE phase")
                if rin.megre_mag is None or rin.megre_phase.echo_times_s != rin.megre_mag.echo_times_s:
                    raise InputError(f"{phase[0].path}: MEGRE phase echoes do not match the magnitude echoes")
                if not _image(rin.megre_phase.files[0]).same_grid(_image(rin.megre_mag.files[0])):
                    raise InputError(f"{rin.megre_phase.files[0]}: MEGRE phase on another grid than the magnitude")
            path = Path(megre[0].path)
            field = number(_metadata(path, layout), "MagneticFieldStrength", path, "needed for fat-water separation",
                           low=0.0, high=12.0, unit="T")
            if field is None:
                raise InputError(f"{path}: MagneticFieldStrength missing from the sidecar (needed for fat-water separation)")
            if field < 0.1:
                raise InputError(f"{path}: MagneticFieldStrength {field:g} T is not plausible")
            rin.field_strength_t = field
        rin.mt_on = _single(query(suffix="MTR", mt="on", **acq_q), "MT-on")
        rin.mt_off = _single(query(suffix="MTR", mt="off", **acq_q), "MT-off")
        if (rin.mt_on is None) != (rin.mt_off is None):
            missing = "mt-off" if rin.mt_off is None else "mt-on"
            have = rin.mt_on or rin.mt_off
            raise InputError(f"{have}: MTR needs both mt-on and mt-off images; {missing} is missing")
        rin.t1w = _single(query(suffix="T1w", reconstruction=Query.NONE, **acq_q), "T1w")
        rin.dixon_water = _single(query(suffix="T1w", reconstruction="water", **acq_q), "Dixon water")
        rin.dixon_fat = _single(query(suffix="T1w", reconstruction="fat", **acq_q), "Dixon fat")
        rin.pdw = _single(query(suffix="PDw", reconstruction=Query.NONE, **acq_q), "PDw")
        rin.t2w = _single(query(suffix="T2w", reconstruction=Query.NONE, **acq_q), "T2w")
        rin.tb1map = _single(query(suffix="TB1map", **acq_q), "TB1map")
        if rin.tb1map is not None:
            rin.tb1map_units = _metadata(rin.tb1map, layout).get("Units")
            if rin.tb1map_units is not None and not isinstance(rin.tb1map_units, str):
                raise InputError(f"{rin.tb1map}: Units must be a string, got {json.dumps(rin.tb1map_units)[:60]}")
        dam = query(suffix="TB1DAM", **acq_q)
        if dam:
            rin.b1_dam = _double_angle_pair(dam, layout)
        if (rin.dixon_water is None) != (rin.dixon_fat is None):
            have = rin.dixon_water or rin.dixon_fat
            raise InputError(f"{have}: scanner Dixon needs both rec-water and rec-fat images")
        if rin.anatomical_reference is None and rin.b1_dam is None:
            continue  # nothing to compute (a TB1map alone only serves the MESE fits)
        if pending:
            rin.region, rin.region_probabilities = classify(rin.anatomical_reference or rin.b1_dam.files[0])
            if rin.region not in regions:
                continue
        if rin.region in seen_regions:
            raise InputError(f"sub-{subject}: several acquisitions map to region {rin.region}; use --bids-filter-file")
        seen_regions.add(rin.region)
        out.append(rin)
    return out


def participants_and_sessions(layout, labels: list[str] | None, session: str | None,
                              excluded=()) -> list[tuple[str, str | None]]:
    """(participant, session) pairs to process; unknown labels raise InputError.

    ``excluded`` (participant, session or None) pairs left out of ``layout``
    (see :func:`load_layout`) still count as present, so they can be named
    and reported as skipped.
    """
    available = sorted(set(layout.get_subjects()) | {sub for sub, _ in excluded})
    if labels:
        wanted = [lab.removeprefix("sub-") for lab in labels]
        unknown = [lab for lab in wanted if lab not in available]
        if unknown:
            raise InputError(f"{layout.root}: participant label(s) not found: {', '.join(unknown)} (have {', '.join(available) or 'none'})")
    else:
        wanted = available
    if not wanted:
        raise InputError(f"{layout.root}: no participants (sub-*) found")
    pairs = []
    for sub in wanted:
        if (sub, None) in excluded:
            pairs.append((sub, session.removeprefix("ses-") if session else None))
            continue
        sessions = sorted(set(layout.get_sessions(subject=sub)) | {ses for s, ses in excluded if s == sub and ses})
        if session:
            ses = session.removeprefix("ses-")
            if ses not in sessions:
                raise InputError(f"{layout.root}: sub-{sub} has no session {ses} (have {', '.join(sessions) or 'none'})")
            pairs.append((sub, ses))
        elif sessions:
            pairs += [(sub, s) for s in sessions]
        else:
            pairs.append((sub, None))
    return pairs
