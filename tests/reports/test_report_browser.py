"""Participant and group reports in a real browser: sections, figures, controls, nothing from the network.

The reports are built straight from derivatives written with the BIDS
writers (phantom thighs and calves of three participants: N4 reference,
segmentation, masks, maps and biomarker tables) and from the group tables
of those, so no pipeline run is needed. Headless Chromium opens each report
inside a small test page that drives it (slider, outline toggle, click to
enlarge) and records in Chromium's net log what it asked of the network; a screenshot checks
that the figures are painted. The tests skip when no Chromium can be found
or installed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest

from bids_muscle import bids
from bids_muscle.interfaces.group import aggregate
from bids_muscle.phantom.anatomy import draw_region
from bids_muscle.reports.group import build_group_report
from bids_muscle.reports.participant import build_participant_report
from bids_muscle.seg.labels import dseg_tsv_text, load_label_table
from bids_muscle.stats.biomarkers import muscle_table

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
#: flags that keep headless Chromium offline and free of first-run prompts; any host name resolves nowhere
HEADLESS_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--host-resolver-rules=MAP * ~NOTFOUND", "--allow-file-access-from-files",
)
WINDOW = (1280, 2000)
WARNING_TEXT = "thigh: test warning shown in the report"
METHODS = {
    "thigh": ["For the thigh, the anatomical reference (T1w image) was corrected for intensity non-uniformity "
              "with N4 (Tustison et al. 2010) in SimpleITK.",
              "Individual muscles were segmented with unet3d (Rohm et al. 2021)."],
    "calf": ["For the calf, the anatomical reference (T1w image) was corrected for intensity non-uniformity "
             "with N4 (Tustison et al. 2010) in SimpleITK.",
             "Individual muscles were segmented with unet2d (Rohm et al. 2021)."],
}
NETWORK = {"thigh": "unet3d", "calf": "unet2d"}
PARTICIPANTS = {"01": 0.2, "02": 0.5, "03": 0.8}  # share of fat-infiltrated muscles
N_SLICES = 5

#: Drives a report in an iframe and writes what it found as JSON into <pre id="result">.
HARNESS = """<!DOCTYPE html><html><body><pre id="result">pending</pre>
<iframe id="report" src="REPORT" style="width:1280px;height:2000px"></iframe>
<script>
document.getElementById("report").addEventListener("load", function () {
  var win = this.contentWindow, doc = this.contentDocument, out = {};
  var q = function (s) { return Array.prototype.slice.call(doc.querySelectorAll(s)); };
  var visible = function (el) { return win.getComputedStyle(el).display !== "none"; };
  out.sections = q("section").map(function (s) { return s.id; });
  out.headings = q("h2, h3").map(function (h) { return h.textContent.trim(); });
  out.images = q("img[src]").map(function (i) {
    return {src: i.getAttribute("src"), loaded: i.complete && i.naturalWidth > 0}; });
  out.viewers = q(".viewer").map(function (v) {
    var layers = Array.prototype.slice.call(v.querySelectorAll("img.layer"));
    var first = layers[0], base = v.querySelector("img.base"), slider = v.querySelector("input.slice");
    var r = {id: v.id, layers: layers.map(function (l) { return l.dataset.layer; }),
             n_slices: JSON.parse(v.dataset.anatomy).length, shown_before: visible(first)};
    v.querySelector("button.bare").click();
    r.shown_bare = layers.some(visible);
    v.querySelector("button.bare").click();
    r.shown_again = visible(first);
    var before = base.getAttribute("src");
    slider.value = "0"; slider.dispatchEvent(new Event("input"));
    r.slice0 = base.getAttribute("src"); r.layer0 = first.getAttribute("src"); r.src_before = before;
    return r; });
  out.pattern_cells = q("table.pattern td.cell").map(function (c) {
    return {ff: c.dataset.ff, side: c.dataset.side, background: win.getComputedStyle(c).backgroundColor}; });
  out.summary_headers = q("table.summary thead tr:last-child th").map(function (t) { return t.textContent; });
  out.summary_rows = q("table.summary tbody tr").length;
  out.references = q("ol.references li").map(function (li) { return li.textContent; });
  out.participant_links = q("a.participant-report").map(function (a) { return a.getAttribute("href"); });
  out.full_table = q("details.full-table table.dataframe").length;
  out.validity = q(".validity").map(function (d) { return d.textContent; });
  out.warnings = q(".warning").map(function (d) { return d.textContent; });
  var zoom = q("img.zoom")[0];
  if (zoom) { zoom.click(); out.lightbox = doc.getElementById("lightbox").classList.contains("open") &&
                                          doc.querySelector("#lightbox img").src === zoom.src; }
  out.text = doc.body.innerText;
  document.getElementById("result").textContent = JSON.stringify(out);
});
</script></body></html>
"""


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


def _write_participant(out: Path, subject: str, severity: float, seed: int) -> None:
    for k, region in enumerate(("thigh", "calf")):
        truth = draw_region(region, np.random.default_rng(seed * 10 + k), n_slices=N_SLICES, severity=severity)
        entities = {"sub": subject, "acq": region}
        sources = [f"bids:raw:sub-{subject}/anat/sub-{subject}_acq-{region}_T1w.nii.gz"]
        net = NETWORK[region]
        images = [
            ({**entities, "desc": "n4"}, "T1w", (truth.pd * 1000).astype(np.float32), {}),
            ({**entities, "desc": net}, "dseg", truth.labels.astype(np.int16),
             {"Model": {"Name": f"{region}_{net}"}}),
            ({**entities, "desc": "muscleregion"}, "mask", truth.muscle_region.astype(np.uint8), {}),
            ({**entities, "desc": "imat"}, "mask", truth.imat.astype(np.uint8), {}),
            ({**entities, "desc": "water"}, "T2map", truth.water_t2_s.astype(np.float32), {"Units": "s"}),
            ({**entities, "desc": "mese"}, "FFmap", truth.ff_percent.astype(np.float32), {"Units": "percent"}),
        ]
        bids.write_dseg_table(out, net, dseg_tsv_text(region))
        for ents, suffix, data, meta in images:
            bids.write_derivative_image(out, ents, suffix, data, truth.affine, sources, meta)
        muscle = truth.tissue == 4
        maps = {"water_t2_ms": np.where(muscle, truth.water_t2_s * 1000, np.nan),
                "ff_mese_percent": np.where(truth.muscle_region, truth.ff_percent, np.nan)}
        table = muscle_table(truth.labels, np.abs(np.diag(truth.affine)[:3]), load_label_table(region), maps,
                             imat_mask=truth.imat, muscle_region_mask=truth.muscle_region).assign(network=net)
        if region == "thigh":  # the segmentation's own confidence columns, as the segmentation stage writes them
            table = table.assign(seg_confidence=0.9, seg_flag=0)
            table.loc[table["name"] == "gracilis_left", ["seg_confidence", "seg_flag"]] = (0.2, 1)
        bids.write_derivative_table(out, entities, "biomarkers", bids.tsv_text(table), {})


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict[str, Path]:
    """Participant reports of three phantom participants (thigh and calf) and their group report."""
    root = tmp_path_factory.mktemp("deriv")
    out = root / "out"
    bids.init_derivatives(out, tmp_path_factory.mktemp("raw"))
    for seed, (subject, severity) in enumerate(PARTICIPANTS.items()):
        _write_participant(out, subject, severity, seed)
    participant = {s: build_participant_report(out, s, command="bids_muscle /data /out participant",
                                                methods_by_region=METHODS, warnings=[WARNING_TEXT])
                   for s in PARTICIPANTS}
    tables, notes = aggregate(out, root / "missing_participants.tsv")
    group = build_group_report(out, {k: str(v) for k, v in tables.items()}, command="bids_muscle /data /out group",
                               notes=notes, methods_text=["Participant tables were aggregated (Hostin et al. 2023)."])
    return {"participant": participant["02"], "group": group, "out": out}


def _chromium(exe: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([exe, *HEADLESS_FLAGS, f"--user-data-dir={profile}", *args],
                          check=False, capture_output=True, text=True, timeout=90)


def page_requests(net_log: Path) -> list[str]:
    """URLs the page asked the network for: Chromium's net log keys them to the file:// page
    (the browser's own background requests carry other keys)."""
    events = json.loads(net_log.read_text()).get("events", [])
    return sorted({e["params"]["url"] for e in events
                   if "url" in e.get("params", {}) and "file://" in str(e["params"].get("network_isolation_key", ""))})


def _drive(exe: str, report: Path, tmp_path: Path) -> dict:
    """What the harness found in ``report``, and under ``"requests"`` what it asked the network for."""
    harness = report.parent / f"harness_{report.stem}.html"
    harness.write_text(HARNESS.replace("REPORT", report.name))
    net_log = tmp_path / "netlog.json"
    try:
        proc = _chromium(exe, tmp_path / "profile", "--virtual-time-budget=15000", f"--log-net-log={net_log}",
                         "--dump-dom", harness.as_uri())
    finally:
        harness.unlink()
    found = re.search(r'<pre id="result">(.*?)</pre>', proc.stdout, flags=re.S)
    assert proc.returncode == 0 and found and found[1] != "pending", proc.stderr[-2000:]
    dom = json.loads(found[1].replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"').replace("&amp;", "&"))
    dom["requests"] = page_requests(net_log)
    return dom


def test_the_net_log_sees_a_page_that_loads_from_the_network(chromium, tmp_path):
    page = tmp_path / "online.html"
    page.write_text('<html><body><img src="http://example.invalid/figure.png"></body></html>')
    net_log = tmp_path / "netlog.json"
    proc = _chromium(chromium, tmp_path / "profile", "--virtual-time-budget=3000", f"--log-net-log={net_log}",
                     "--dump-dom", page.as_uri())
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert page_requests(net_log) == ["http://example.invalid/figure.png"]


def _offline(dom: dict, report: Path) -> None:
    """Nothing asked of the network; every image loaded from a file next to the report."""
    assert dom["requests"] == [], f"network resources requested: {dom['requests']}"
    for image in dom["images"]:
        assert image["loaded"], f"image did not load: {image['src']}"
        assert not image["src"].startswith(("http:", "https:", "//", "/")), image["src"]
        assert (report.parent / image["src"]).is_file(), image["src"]
    html = report.read_text()
    assert not re.search(r"""(src|href)=["'](https?:)?//[^"']*\.(js|css|png|jpe?g|svg|woff2?)""", html)
    assert "<link" not in html and "@import" not in html and "url(http" not in html


def test_participant_report_sections_controls_and_figures(chromium, reports, tmp_path):
    report = reports["participant"]
    dom = _drive(chromium, report, tmp_path)
    _offline(dom, report)
    assert dom["sections"] == ["thigh", "calf", "warnings", "methods"]
    headings = set(dom["headings"])
    assert {"Thigh", "Calf", "Segmentation", "Quantitative maps", "Warnings", "Segmentation model validity",
            "Methods", "References", "Software", "Command"} <= headings
    assert {"Fat-infiltration pattern (unet3d)", "Fat-infiltration pattern (unet2d)"} <= headings
    # every slice reachable, outlines switch off and on, the slider moves both the image and the outlines
    assert [v["id"] for v in dom["viewers"]] == ["viewer-thigh", "viewer-calf"]
    for viewer in dom["viewers"]:
        assert viewer["n_slices"] == N_SLICES and viewer["layers"][0] in NETWORK.values()
        assert {"muscleregion", "imat"} <= set(viewer["layers"])
        assert viewer["shown_before"] and not viewer["shown_bare"] and viewer["shown_again"]
        assert viewer["slice0"].endswith("_slice-000.jpg") and viewer["slice0"] != viewer["src_before"]
        assert viewer["layer0"].endswith("_slice-000.png")
    # the pattern chart: muscles x (R, L), coloured by fat fraction, more fat darker
    cells = [c for c in dom["pattern_cells"] if c["ff"] not in ("–", "")]
    assert len(cells) == len(load_label_table("thigh")) + len(load_label_table("calf"))  # one FF map, R and L
    assert {c["side"] for c in cells} == {"right", "left"}
    brightness = [sum(map(int, re.findall(r"\d+", c["background"])[:3])) for c in cells]
    ff = [float(c["ff"]) for c in cells]
    assert np.corrcoef(ff, brightness)[0, 1] < -0.8
    # the summary: right then left for each value, the segmentation's confidence shown
    assert dom["summary_headers"][:2] == ["R", "L"] and dom["summary_headers"].count("R") >= 6
    assert dom["summary_rows"] == len(load_label_table("thigh")) // 2 + len(load_label_table("calf")) // 2
    assert "segmentation confidence" in dom["text"] and "segmentation flagged (confidence 0.20)" in dom["text"]
    assert dom["full_table"] == 2
    # warnings: each region's model against its target, the flagged muscle, the warning given
    assert any("thigh: model thigh_unet3d" in v and "target" in v for v in dom["validity"])
    assert any("calf: model calf_unet2d: real calf leave-one-leg-out Dice" in v for v in dom["validity"])
    assert WARNING_TEXT in dom["warnings"]
    assert any("gracilis_left (unet3d) is flagged by the segmentation" in w for w in dom["warnings"])
    # methods: one paragraph for what both regions share, one per region for what differs, and the references
    text = dom["text"]
    assert "For the thigh and calf, the anatomical reference (T1w image) was corrected" in text
    assert "For the thigh, individual muscles were segmented with unet3d" in text
    assert "*bids_muscle*" not in text and not re.search(r"[a-z]\.[A-Z]", text.split("References")[0])
    refs = " ".join(dom["references"])
    assert "Tustison NJ" in refs and "Rohm M" in refs and "Paszke A" in refs and "Yarkoni T" in refs
    assert dom["lightbox"]
    # the CITATION files hold the same text and the cited entries
    md = (reports["out"] / "logs/sub-02_CITATION.md").read_text()
    bib = (reports["out"] / "logs/sub-02_CITATION.bib").read_text()
    assert "For the thigh and calf, the anatomical reference" in md and "Tustison NJ" in md
    assert "@article{tustison2010," in bib and "@article{rohm2021," in bib
    figures = [report.parent / i["src"] for i in dom["images"]] + list(
        (report.parent / "sub-02/figures").glob("*"))
    assert sum(p.stat().st_size for p in set(figures)) <= 5 * 2**20


def test_participant_report_screenshot_shows_the_figures(chromium, reports, tmp_path):
    png = tmp_path / "report.png"
    proc = _chromium(chromium, tmp_path / "profile", f"--screenshot={png}", f"--window-size={WINDOW[0]},{WINDOW[1]}",
                     "--virtual-time-budget=10000", reports["participant"].as_uri())
    assert proc.returncode == 0 and png.is_file(), proc.stderr[-2000:]
    rgb = matplotlib.image.imread(png)[..., :3]
    assert rgb.shape[:2] == (WINDOW[1], WINDOW[0])
    # the slice viewer paints a black field of view with the anatomy in it; a page whose
    # images failed to load has no large dark area
    assert (rgb.max(axis=-1) < 0.1).mean() > 0.03
    # saturated colour (outlines, the pattern chart) only comes from the figures and the chart
    saturation = rgb.max(axis=-1) - rgb.min(axis=-1)
    assert (saturation > 0.3).mean() > 0.01


def test_group_report_regions_links_pattern_and_methods(chromium, reports, tmp_path):
    report = reports["group"]
    dom = _drive(chromium, report, tmp_path)
    _offline(dom, report)
    assert dom["sections"][:3] == ["participants", "thigh", "calf"] and "statistics" in dom["sections"]
    assert "methods" in dom["sections"]
    # a relative link to every participant report, and the report is there
    assert dom["participant_links"] == [f"../sub-{s}.html" for s in PARTICIPANTS]
    for link in dom["participant_links"]:
        assert (report.parent / link).resolve().is_file()
    headings = dom["headings"]
    assert any(h.startswith("Thigh fat-infiltration pattern") for h in headings)
    assert any(h.startswith("Calf fat-infiltration pattern") for h in headings)
    assert any(h.startswith("Thigh: fat fraction, MESE (%) per muscle and site") for h in headings)
    # thigh and calf apart: no calf muscle on a thigh figure name
    sources = [i["src"] for i in dom["images"]]
    assert {"figures/pattern_thigh_unet3d.png", "figures/pattern_calf_unet2d.png"} <= set(sources)
    # statistics only where the numbers allow: one site, so the reason is given
    assert "Not computed: no site test" in dom["text"]
    assert "Hostin MA" in " ".join(dom["references"]) and "bids_muscle /data /out group" in dom["text"]
    # the complete site summary is there (not cut), and linked
    summary = pd.read_csv(report.parent / "site_summary.tsv", sep="\t")
    assert f"{len(summary)} rows; also in site_summary.tsv" in dom["text"]
