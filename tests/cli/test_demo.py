"""``make demo``'s own path: ``bids_muscle-demo`` with the default settings, participant then group.

This is what a new user runs first; it needs no ``../shared``.
"""

import re
import subprocess
import sys

import pandas as pd
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo") / "demo"
    proc = subprocess.run([sys.executable, "-m", "bids_muscle.cli.demo", str(folder)],
                          capture_output=True, text=True, timeout=1200)
    return folder, proc


def test_demo_runs_both_levels_and_says_where_the_reports_are(demo):
    folder, proc = demo
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = (folder / "out").resolve()
    reports = sorted(out.glob("sub-*.html"))
    assert [p.name for p in reports] == ["sub-01.html", "sub-02.html"]
    tail = proc.stdout.strip().splitlines()[-4:]
    assert tail[0].startswith("Participant reports:") and all(str(p) in tail[0] for p in reports)
    assert str(out / "group" / "report.html") in "\n".join(tail)
    assert not (folder / "bids" / "work").exists() and (folder / "work").is_dir()


def test_every_group_table_holds_rows_and_the_report_links_them(demo):
    folder, proc = demo
    assert proc.returncode == 0, proc.stderr[-3000:]
    group = folder / "out" / "group"
    html = (group / "report.html").read_text()
    tables = sorted(group.glob("*.tsv"))
    assert {"biomarkers.tsv", "biomarkers_wide.tsv", "site_summary.tsv", "excluded.tsv"} <= {t.name for t in tables}
    for table in tables:
        frame = pd.read_csv(table, sep="\t")
        assert table.name == "excluded.tsv" or len(frame) > 0, f"{table.name} has no rows"
        assert f'href="{table.name}"' in html
    tidy = pd.read_csv(group / "biomarkers.tsv", sep="\t")
    assert set(tidy["participant"].astype(str).str.zfill(2)) == {"01", "02"}
    assert set(tidy["region"]) == {"thigh", "calf"}
    # the defaults run one network per region (thigh unet3d, calf unet2d): no comparison, and the report says why
    assert set(tidy.groupby("region")["network"].nunique()) == {1}
    assert not (group / "network_differences.tsv").exists() and not (group / "bland_altman.tsv").exists()
    assert "networks not compared" in html
    # one participant per site: no Kruskal-Wallis test, and the report says why
    assert not (group / "site_effects.tsv").exists() and re.search(r"no site test: .*participants per site", html)
    for img in re.findall(r'<img src="([^"]+)"', html):
        assert (group / img).is_file()
