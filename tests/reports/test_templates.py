"""The report templates live in the top-level templates/ folder and are installed with the package."""

from __future__ import annotations

import tomllib
from pathlib import Path

from bids_muscle.reports.assets import template_dir

REPO = Path(__file__).resolve().parents[2]


def test_templates_are_read_from_the_top_level_folder():
    assert template_dir() == REPO / "templates"
    for name in ("participant.html", "group.html", "report.css", "report.js", "methods/intro.txt",
                 "methods/CITATION.md", "methods/references.bib"):
        assert (template_dir() / name).is_file(), name
    assert not (REPO / "bids_muscle/reports/templates").exists()


def test_the_wheel_carries_every_package_and_the_templates():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = set(config["packages"])
    folders = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "bids_muscle").rglob("__init__.py")}
    assert folders <= packages, f"packages missing from pyproject.toml: {sorted(folders - packages)}"
    assert packages - folders == {"bids_muscle.templates"}
    assert config["package-dir"] == {"bids_muscle.templates": "templates"}
    patterns = config["package-data"]["bids_muscle.templates"]
    shipped = {p.relative_to(REPO / "templates").as_posix() for p in (REPO / "templates").rglob("*") if p.is_file()}
    covered = {s for s in shipped for pat in patterns if Path(s).match(pat) and s.count("/") == pat.count("/")}
    assert covered == shipped, f"templates not installed: {sorted(shipped - covered)}"
