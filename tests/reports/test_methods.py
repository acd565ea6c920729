"""Methods text and references: paragraphs per region only where they differ, every citation resolved."""

from __future__ import annotations

import re
from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe
from niworkflows.engine.workflows import LiterateWorkflow as Workflow

from bids_muscle.reports import methods

REPO = Path(__file__).resolve().parents[2]
#: In-text citations as the workflows write them: "Amer et al. 2022", "Hunter 2007"
CITATION = re.compile(r"\b([A-Z][A-Za-z-]+(?: et al\.| and [A-Z][A-Za-z-]+)? (?:19|20)\d\d)\b")


def _region(region: str, network: str) -> Workflow:
    workflow = Workflow(name=f"{region}_wf")
    workflow.__desc__ = f"For the {region}, the anatomical reference (T1w image) was corrected with N4 (Tustison et al. 2010)."
    inner = []
    for name, desc in (("mtr_wf", "The magnetisation transfer ratio was computed as MTR = 100 (M_off - M_on) / M_off"),
                       ("seg_wf", f"Individual muscles were segmented with {network} (Rohm et al. 2021).")):
        sub = Workflow(name=name)
        sub.__desc__ = desc
        sub.add_nodes([pe.Node(niu.IdentityInterface(fields=["x"]), name="node")])
        inner.append(sub)
    workflow.connect(inner[0], "node.x", inner[1], "node.x")
    return workflow


def test_descriptions_come_in_graph_order_each_once():
    described = methods.workflow_descriptions(_region("thigh", "unet3d"))
    assert [d.split()[0] for d in described] == ["For", "The", "Individual"]


def test_shared_processing_is_one_paragraph_and_differences_one_per_region():
    paragraphs = methods.region_paragraphs({r: methods.workflow_descriptions(_region(r, n))
                                            for r, n in (("thigh", "unet3d"), ("calf", "unet2d"))})
    assert paragraphs == [
        "For the thigh and calf, the anatomical reference (T1w image) was corrected with N4 (Tustison et al. 2010). "
        "The magnetisation transfer ratio was computed as MTR = 100 (M_off - M_on) / M_off.",
        "For the thigh, individual muscles were segmented with unet3d (Rohm et al. 2021).",
        "For the calf, individual muscles were segmented with unet2d (Rohm et al. 2021).",
    ]
    same = methods.region_paragraphs({r: methods.workflow_descriptions(_region(r, "unet2d")) for r in ("thigh", "calf")})
    assert len(same) == 1 and same[0].startswith("For the thigh and calf, the anatomical reference")


def test_sentences_are_separated_and_the_name_is_plain():
    text = " ".join(methods.methods_paragraphs({"calf": ["For the calf, B1 was mapped", "T2 was fitted."]}))
    assert "*" not in text and not re.search(r"[a-z0-9]\.[A-Z]", text)
    assert "For the calf, B1 was mapped. T2 was fitted." in text  # "B1", "T2" keep their capitals
    assert text.startswith("Images were processed with bids_muscle ")


def test_every_citation_of_the_workflows_and_the_intro_has_a_reference():
    refs = methods.read_references()
    known = {r.citation for r in refs}
    assert len(known) == len(refs), "two entries share an in-text form"
    sources = [*(REPO / "bids_muscle/workflows").glob("*.py"), REPO / "templates/methods/intro.txt"]
    cited = {c for path in sources for c in CITATION.findall(path.read_text())}
    assert {"Amer et al. 2022", "Hostin et al. 2023", "Agosti et al. 2021", "Rohm et al. 2021"} <= cited
    assert cited - known == set(), f"cited without a reference: {sorted(cited - known)}"
    for ref in refs:
        assert ref.fields.get("title") and ref.authors, ref.key
        assert ref.url is None or ref.url.startswith("https://"), ref.key


def test_references_listed_are_those_cited():
    paragraphs = ["Fitted as before (Marty et al. 2016; Ben-Eliezer et al. 2015) and drawn (Hunter 2007)."]
    assert [r.key for r in methods.cited(paragraphs)] == ["beneliezer2015", "hunter2007", "marty2016"]
    text = methods.cited(paragraphs)[1].text()
    assert text == "Hunter JD (2007). Matplotlib: a 2D graphics environment. Computing in Science & Engineering 9(3):90–95."


def test_citation_files_hold_the_text_and_the_cited_entries(tmp_path):
    paragraphs = methods.methods_paragraphs({"thigh": ["For the thigh, muscles were segmented (Rohm et al. 2021)."]})
    md, bib = methods.write_citation_files(tmp_path, "01", "pre", paragraphs)
    assert md == tmp_path / "logs/sub-01_ses-pre_CITATION.md" and bib.name == "sub-01_ses-pre_CITATION.bib"
    text = md.read_text()
    assert all(p in text for p in paragraphs) and "## References" in text and "Rohm M, Markmann M" in text
    entries = re.findall(r"^@\w+\{(\w+),", bib.read_text(), flags=re.M)
    assert sorted(entries) == sorted(r.key for r in methods.cited(paragraphs))
    assert "rohm2021" in entries and "amer2022" not in entries
