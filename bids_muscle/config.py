"""One frozen configuration object for a run, and the process environment.

Environment defaults are set here, before nipype or niworkflows are
imported, so that nothing tries to reach the network: no nipype version
check (``NIPYPE_NO_ET``), no TemplateFlow download (``TEMPLATEFLOW_HOME``
points at an empty TemplateFlow folder shipped in the package) and a
non-interactive matplotlib backend.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path


def apply_environment_defaults() -> None:
    """Set offline defaults unless the user already chose a value."""
    os.environ.setdefault("NIPYPE_NO_ET", "1")
    os.environ.setdefault("MPLBACKEND", "Agg")
    tf_home = resources.files("bids_muscle.data").joinpath("templateflow")
    os.environ.setdefault("TEMPLATEFLOW_HOME", str(tf_home))


@dataclass(frozen=True)
class Config:
    """Everything a run needs, turned from argv by :mod:`bids_muscle.cli.run`."""

    bids_dir: Path
    output_dir: Path
    analysis_level: str
    work_dir: Path
    participant_label: tuple[str, ...] = ()
    session_label: str | None = None
    bids_filters: dict = field(default_factory=dict)
    regions: tuple[str, ...] = ("thigh", "calf")
    nprocs: int = 2
    omp_nthreads: int = 1
    mem_gb: float | None = None
    skip_bids_validation: bool = False
    plugin: str = "MultiProc"
    plugin_settings: dict = field(default_factory=dict)
    stop_on_first_crash: bool = False
    sloppy: bool = False
    mese_denoise: str = "mppca"
    mese_fat_t2_ms: float = 140.0  # qmri.t2_dictionary.FAT_T2_S
    mese_refocus_width: float = 1.0  # qmri.epg.default_slice_profile(refocus_width_ratio)
    dixon_fat_model: str = "hamilton6"  # qmri.fat_spectrum.fat_spectrum
    site_column: str = "site"
    reference_seg: Path | None = None
    networks: tuple[str, ...] = ()  # empty: seg.zoo.DEFAULT_NETWORKS
    model_dir: str | None = None
    erode_mm: float = 0.0
    imat_method: str = "dcae"
    write_probseg: bool = False
    seg_scales: tuple[float, ...] = (0.9, 1.0, 1.1)  # seg.ensemble.DEFAULT_SCALES
    command: str = ""

    def plugin_args(self) -> dict:
        """nipype plugin arguments: n_procs/memory for MultiProc, the settings file otherwise."""
        args = dict(self.plugin_settings.get("plugin_args", {}))
        if self.plugin == "MultiProc":
            args.setdefault("n_procs", self.nprocs)
            if self.mem_gb:
                args.setdefault("memory_gb", self.mem_gb)
            args.setdefault("raise_insufficient", False)
        return args
