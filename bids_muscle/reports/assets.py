"""Where the report templates live and the Jinja2 environment that reads them.

The templates (HTML, the inline stylesheet and script, the methods text and
its references) sit in the repository's top-level ``templates/`` folder; a
built wheel carries them as ``bids_muscle/templates/`` (``pyproject.toml``
maps the folder into the package).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

_PACKAGE = Path(__file__).resolve().parents[1]


def template_dir() -> Path:
    """The templates folder: inside the installed package, else the source tree's ``templates/``."""
    for folder in (_PACKAGE / "templates", _PACKAGE.parent / "templates"):
        if (folder / "participant.html").is_file():
            return folder
    raise FileNotFoundError(f"report templates not found in {_PACKAGE / 'templates'} or {_PACKAGE.parent / 'templates'}")


@lru_cache(maxsize=1)
def environment() -> Environment:
    """Jinja2 environment over :func:`template_dir`; HTML is autoescaped, text templates are not."""
    return Environment(
        loader=FileSystemLoader(str(template_dir())),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
    )


def render(name: str, **context) -> str:
    """Render template ``name`` (a path inside :func:`template_dir`)."""
    return environment().get_template(name).render(**context)
