"""A participant report opens in a real browser: figures load, sections are there.

The report is built straight from derivatives written with the BIDS writers
(maps, masks, segmentation and biomarker table of one phantom thigh), so no
pipeline run is needed. Chromium renders it headless and offline; the test
skips when no Chromium can be found or installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from bids_muscle import bids
from bids_muscle.phantom.anatomy import draw_region
from bids_muscle.reports.participant import build_participant_report
from bids_muscle.seg.labels import dseg_tsv_text, load_label_table
from bids_muscle.stats.biomarkers import muscle_table

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
#: flags that keep headless Chromium offline and free of first-run prompts
HEADLESS_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars",
)
WINDOW = (1280, 2000)
WARNING_TEXT = "thigh: test warning shown in the report"
METHODS_TEXT = "Maps were fitted by EPG dictionary matching (test sentence)."


def _find_chromium() -> str | None:
    return next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)


@pytest.fixture(scope="module")
def chromium() -> str:
    exe = _find_chromium()
    if exe is None and os.geteuid() == 0 and shutil.which("apt-get"):
        # a CI container may lack a browser; installing one is quick where apt works
        try:
            subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "chromium"],
                           env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
                           capture_output=True, timeout=240, check=False)
        except subprocess.TimeoutExpired:
            pytest.skip("Chromium not found and apt-get install chromium took longer than 240 s")
        exe = _find_chromium()
    if exe is None:
        pytest.skip(f"no Chromium on PATH ({', '.join(CHROMIUM_NAMES)}) and none could be installed")
    return exe


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    """sub-01.html over one phantom thigh: segmentation, masks, maps and biomarker table."""
    out = tmp_path_factory.mktemp("deriv") / "out"
    truth = draw_region("thigh", np.random.default_rng(3), n_slices=4, severity=0.5)
    entities = {"sub": "01", "acq": "thigh"}
    sources = ["bids:raw:sub-01/anat/sub-01_acq-thigh_T1w.nii.gz"]
    anat = (truth.pd * 1000).astype(np.float32)
    images = [
        ({**entities, "desc": "n4"}, "T1w", anat, {}),
        ({**entities, "desc": "unet2d"}, "dseg", truth.labels.astype(np.int16), {}),
        ({**entities, "desc": "muscleregion"}, "mask", truth.muscle_region.astype(np.uint8), {}),
        ({**entities, "desc": "imat"}, "mask", truth.imat.astype(np.uint8), {}),
        ({**entities, "desc": "water"}, "T2map", truth.water_t2_s.astype(np.float32), {"Units": "s"}),
        ({**entities, "desc": "mese"}, "FFmap", truth.ff_percent.astype(np.float32), {"Units": "percent"}),
    ]
    bids.init_derivatives(out, tmp_path_factory.mktemp("raw"))
    bids.write_dseg_table(out, "unet2d", dseg_tsv_text("thigh"))
    for ents, suffix, data, meta in images:
        bids.write_derivative_image(out, ents, suffix, data, truth.affine, sources, meta)
    spacing = np.abs(np.diag(truth.affine)[:3])
    muscle = truth.tissue == 4
    maps = {"water_t2_ms": np.where(muscle, truth.water_t2_s * 1000, np.nan),
            "ff_mese_percent": np.where(truth.muscle_region, truth.ff_percent, np.nan)}
    table = muscle_table(truth.labels, spacing, load_label_table("thigh"), maps,
                         imat_mask=truth.imat, muscle_region_mask=truth.muscle_region)
    bids.write_derivative_table(out, entities, "biomarkers", bids.tsv_text(table), {})
    return build_participant_report(out, "01", command="bids_muscle /data /out participant",
                                    methods=[METHODS_TEXT], warnings=[WARNING_TEXT])


def _chromium(exe: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([exe, *HEADLESS_FLAGS, f"--user-data-dir={profile}", *args],
                          check=False, capture_output=True, text=True, timeout=60)


class _Outline(HTMLParser):
    """Section ids, headings, image sources and text of a DOM dump."""

    def __init__(self):
        super().__init__()
        self.sections, self.headings, self.images, self.text = [], [], [], []
        self._in_heading = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.sections.append(attrs.get("id"))
        elif tag == "img":
            self.images.append(attrs.get("src"))
        self._in_heading = tag in ("h2", "h3")

    def handle_endtag(self, tag):
        self._in_heading = False

    def handle_data(self, data):
        if self._in_heading and data.strip():
            self.headings.append(data.strip())
        self.text.append(data)


def test_report_renders_with_figures(chromium, report, tmp_path):
    png = tmp_path / "report.png"
    proc = _chromium(chromium, tmp_path / "profile", f"--screenshot={png}",
                     f"--window-size={WINDOW[0]},{WINDOW[1]}", report.as_uri())
    assert proc.returncode == 0 and png.is_file(), proc.stderr[-2000:]
    rgb = matplotlib.image.imread(png)[..., :3]
    assert rgb.shape[:2] == (WINDOW[1], WINDOW[0])
    not_white = np.any(rgb < 0.9, axis=-1)
    # text, figures and tables cover a real part of the first screen; a blank
    # or unstyled error page would not
    assert not_white.mean() > 0.05 and rgb.std() > 0.1
    # the figures loaded: only they bring saturated colour (label colours,
    # viridis maps) onto a page that is otherwise grey text on white. Measured:
    # 2.2 % of the screen with the figures, 0.05 % when they fail to load.
    saturation = rgb.max(axis=-1) - rgb.min(axis=-1)
    assert (saturation > 0.3).mean() > 0.01


def test_report_dom_has_region_warning_and_methods_sections(chromium, report, tmp_path):
    proc = _chromium(chromium, tmp_path / "profile", "--dump-dom", report.as_uri())
    assert proc.returncode == 0 and "</html>" in proc.stdout, proc.stderr[-2000:]
    outline = _Outline()
    outline.feed(proc.stdout)
    assert outline.sections == ["thigh", "warnings", "methods"]
    assert {"Thigh", "Per-muscle biomarkers", "Warnings", "Methods", "Software", "Command"} <= set(outline.headings)
    # every figure is a file next to the report (the report opens offline)
    assert len(outline.images) >= 4
    for src in outline.images:
        assert not src.startswith(("http:", "https:", "/")) and (report.parent / src).is_file(), src
    text = " ".join(" ".join(outline.text).split())
    assert WARNING_TEXT in text and METHODS_TEXT in text
    assert "vastus_lateralis" in text or "VL" in text
