"""Methods text and references of a participant, for the report and for ``CITATION.md`` / ``.bib``.

Each workflow says what it does in its ``__desc__`` (nipreps style). The
sentences of one region are gathered in graph order; a sentence the same in
every region is written once ("For the thigh and calf, ..."), the others
once per region. The opening paragraph (software and versions) and the
references are templates (``templates/methods/``). A reference is listed
when its in-text form (``Amer et al. 2022``) appears in the text.
"""

from __future__ import annotations

import importlib.metadata
import re
from dataclasses import dataclass, field
from pathlib import Path

from nipype.pipeline import engine as pe

from bids_muscle import bids
from bids_muscle.reports.assets import render, template_dir
from bids_muscle.seg.labels import REGIONS

#: Packages whose versions the methods name (distribution names).
SOFTWARE = ("bids_muscle", "nipype", "niworkflows", "pybids", "nibabel", "SimpleITK", "torch", "scikit-learn",
            "numpy", "scipy", "matplotlib", "pandas", "jinja2")
_LATEX = {r"{\'e}": "é", r"{\'a}": "á", r"{\~n}": "ñ", r'{\"e}': "ë", r'{\"o}': "ö", r'{\"u}': "ü", r"\&": "&"}


def versions() -> dict[str, str]:
    """Installed version of every package of :data:`SOFTWARE` ("n/a" when missing)."""
    found = {}
    for name in SOFTWARE:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "n/a"
    return found


def workflow_descriptions(workflow) -> list[str]:
    """``__desc__`` of ``workflow`` and of the workflows inside it, in graph order, each once."""
    found = [workflow.__desc__] if getattr(workflow, "__desc__", None) else []
    for node in pe.utils.topological_sort(workflow._graph)[0]:
        if isinstance(node, pe.Workflow):
            found += [d for d in workflow_descriptions(node) if d not in found]
    return found


def sentence(text: str) -> str:
    """``text`` on one line, ending with a full stop."""
    text = " ".join(text.split())
    return text if text.endswith((".", "!", "?")) else text + "."


def _lower_first(text: str) -> str:
    """'The MTR was ...' -> 'the MTR was ...'; leaves 'B1 was', 'T2 was', 'MTR = ' alone."""
    return text[0].lower() + text[1:] if re.match(r"[A-Z][a-z]", text) else text


def _joined(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def region_paragraphs(region_sentences: dict[str, list[str]]) -> list[str]:
    """One paragraph for what every region shares, then one per region for what differs (thigh first).

    ``region_sentences`` maps a region to its workflow descriptions. A
    description that starts with "For the <region>, " loses that opening,
    so that the same processing of two regions compares equal.
    """
    cleaned = {}
    order = sorted(region_sentences, key=lambda r: (REGIONS.index(r) if r in REGIONS else len(REGIONS), r))
    for region, sentences in ((r, region_sentences[r]) for r in order):
        opening = f"For the {region}, "
        cleaned[region] = [sentence(s[len(opening):] if s.startswith(opening) else s) for s in sentences if s.strip()]
    regions = [r for r in cleaned if cleaned[r]]
    if not regions:
        return []
    shared = [s for s in cleaned[regions[0]] if all(s in cleaned[r] for r in regions[1:])] if len(regions) > 1 else []
    groups = ([(regions, shared)] if shared else []) + [
        ([r], [s for s in cleaned[r] if s not in shared]) for r in regions
    ]
    return [" ".join([f"For the {_joined(names)}, {_lower_first(sentences[0])}", *sentences[1:]])
            for names, sentences in groups if sentences]


def methods_paragraphs(region_sentences: dict[str, list[str]], extra: list[str] | None = None) -> list[str]:
    """The opening paragraph (software, versions) then :func:`region_paragraphs` and ``extra``."""
    intro = " ".join(render("methods/intro.txt", versions=versions()).split())
    return [intro, *region_paragraphs(region_sentences), *(sentence(p) for p in extra or [] if p.strip())]


@dataclass
class Reference:
    """One BibTeX entry of ``templates/methods/references.bib``."""

    key: str
    kind: str
    fields: dict[str, str]
    source: str
    authors: list[str] = field(init=False)

    def __post_init__(self):
        self.authors = [a.strip() for a in re.split(r"\s+and\s+", self.fields.get("author", "")) if a.strip()]

    @staticmethod
    def _plain(text: str) -> str:
        for latex, char in _LATEX.items():
            text = text.replace(latex, char)
        return " ".join(text.replace("{", "").replace("}", "").replace("--", "–").split())

    def _surname(self, author: str) -> str:
        return self._plain(author.split(",")[0])

    @property
    def citation(self) -> str:
        """In-text form: ``Hunter 2007``, ``Yu and Reeder 2008``, ``Amer et al. 2022``."""
        names = [a for a in self.authors if a != "others"]
        if len(names) >= 3 or "others" in self.authors:
            who = f"{self._surname(names[0])} et al."
        else:
            who = " and ".join(self._surname(a) for a in names)
        year = self.fields.get("year")
        return f"{who} {year}" if year else who

    def _author_list(self) -> str:
        out = []
        for author in self.authors[:6]:
            if author == "others":
                break
            if "," not in author:  # an organisation in braces
                out.append(self._plain(author))
                continue
            last, first = (self._plain(p) for p in author.split(",", 1))
            initials = "".join(part[0] for part in re.split(r"[\s.-]+", first) if part)
            out.append(f"{last} {initials}")
        more = len(self.authors) > 6 or "others" in self.authors
        return ", ".join(out) + (", et al." if more else "")

    @property
    def url(self) -> str | None:
        if "doi" in self.fields:
            return f"https://doi.org/{self.fields['doi']}"
        return self.fields.get("url")

    def text(self) -> str:
        """Author list, year, title, venue, without the link."""
        f = {k: self._plain(v) for k, v in self.fields.items()}
        venue = f.get("journal") or f.get("booktitle") or f.get("publisher") or ""
        where = venue + (f" {f['volume']}" if "volume" in f else "") + (f"({f['number']})" if "number" in f else "")
        where += (f":{f['pages']}" if "pages" in f else "")
        head = self._author_list() + (f" ({f['year']})" if "year" in f else "")
        return f"{head.rstrip('.')}. {f.get('title', '')}." + (f" {where}." if where else "")

    @property
    def markdown(self) -> str:
        return self.text() + (f" <{self.url}>" if self.url else "")


def _fields(body: str) -> dict[str, str]:
    fields, pos = {}, 0
    pattern = re.compile(r"\s*,?\s*([A-Za-z]+)\s*=\s*\{")
    while (match := pattern.match(body, pos)) is not None:
        depth, start = 1, match.end()
        end = start
        while depth:
            if end >= len(body):
                raise ValueError(f"unbalanced braces in the field {match[1]!r}")
            depth += {"{": 1, "}": -1}.get(body[end], 0)
            end += 1
        fields[match[1].lower()] = body[start:end - 1]
        pos = end
    return fields


def read_references(path: Path | None = None) -> list[Reference]:
    """Every entry of the references file (default ``templates/methods/references.bib``)."""
    path = Path(path) if path is not None else template_dir() / "methods" / "references.bib"
    text = path.read_text(encoding="utf-8")
    refs = []
    starts = [m for m in re.finditer(r"^@(\w+)\s*\{\s*([^,\s]+)\s*,", text, flags=re.M)]
    for k, match in enumerate(starts):
        end = starts[k + 1].start() if k + 1 < len(starts) else len(text)
        source = text[match.start():end].strip()
        body = source[match.end() - match.start():].rstrip()
        if not body.endswith("}"):
            raise ValueError(f"{path}: entry {match[2]} does not end with '}}'")
        try:
            refs.append(Reference(match[2], match[1].lower(), _fields(body[:-1]), source))
        except ValueError as err:
            raise ValueError(f"{path}: entry {match[2]}: {err}") from None
    return refs


def cited(paragraphs: list[str], references: list[Reference] | None = None) -> list[Reference]:
    """References whose in-text form appears in ``paragraphs``, in alphabetical order."""
    text = " ".join(paragraphs)
    refs = read_references() if references is None else references
    return sorted((r for r in refs if r.citation in text), key=lambda r: (r.citation.lower(), r.key))


def write_citation_files(out_dir: Path, subject: str, session: str | None, paragraphs: list[str]) -> tuple[Path, Path]:
    """``logs/sub-<p>[_ses-<s>]_CITATION.md`` and ``.bib`` under ``out_dir``."""
    stem = f"sub-{subject}" + (f"_ses-{session}" if session else "") + "_CITATION"
    logs = Path(out_dir) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    refs = cited(paragraphs)
    markdown = render("methods/CITATION.md", subject=subject, session=session, paragraphs=paragraphs,
                      references=refs, versions=versions(), bib_name=f"{stem}.bib")
    bib = "".join(f"{r.source}\n\n" for r in refs)
    return (bids.write_text_atomic(logs / f"{stem}.md", markdown),
            bids.write_text_atomic(logs / f"{stem}.bib", bib))
