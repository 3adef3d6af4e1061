"""Templates: the jinja2 environment, where templates are found, and one function per output text."""

from __future__ import annotations

import re
import site
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

from analyzer.report import format as fmt

TEMPLATE_FOLDER = "templates"
SHARE_FOLDER = ("share", "postmortem", "templates")  # where a wheel installs them (pyproject data-files)


def template_dirs() -> list[Path]:
    """Where templates live: the repo's templates/ (source checkout, editable install), else the installed copy."""
    import analyzer

    package = Path(analyzer.__file__).resolve().parent
    candidates = [
        package.parent / TEMPLATE_FOLDER,  # repo root, beside analyzer/
        Path(sys.prefix).joinpath(*SHARE_FOLDER),  # a wheel's data-files, in this environment
        Path(sys.base_prefix).joinpath(*SHARE_FOLDER),
        Path(site.getuserbase()).joinpath(*SHARE_FOLDER),  # pip install --user
    ]
    return [d for d in candidates if (d / "report.md.j2").is_file()]


def autoescaped(name: str | None) -> bool:
    """HTML templates escape every value; markdown templates escape with explicit filters (md, cell, code).

    `select_autoescape`'s defaults match `.html`, not `.html.j2`, so the rule is spelled out here.
    """
    return name is None or name.endswith(".html.j2")


@lru_cache(maxsize=1)
def environment():
    import jinja2

    dirs = template_dirs()
    if not dirs:
        raise FileNotFoundError("postmortem's report templates were not found (looked beside the analyzer package "
                                f"and in {Path(sys.prefix).joinpath(*SHARE_FOLDER)})")
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader([str(d) for d in dirs]),
        autoescape=autoescaped,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        finalize=fmt.finalize,
    )
    env.filters.update({
        "md": fmt.md_text,
        "cell": fmt.md_cell,
        "code": fmt.md_code,
        "codecell": lambda text: fmt.md_code(text, in_table=True),
        "fence": fmt.md_fence,
        "num": fmt.number,
    })
    return env


def render(template: str, **context: Any) -> str:
    return environment().get_template(template).render(**context)


def tidy_markdown(text: str) -> str:
    """Fold runs of blank lines into one and end with one newline: templates then need no whitespace bookkeeping.
    Safe for fenced blocks, because every block the reports fence (log lines, JSON, a command) has no blank line."""
    return re.sub(r"\n{3,}", "\n\n", text).strip("\n") + "\n"
