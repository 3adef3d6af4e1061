"""The terminal summary: a compact table of findings, root causes first, and a one-line verdict."""

from __future__ import annotations

import re
import textwrap

from analyzer.findings import Diagnosis
from analyzer.report.model import fix_heading, fix_line, recommendations, verdict

STYLE = {"critical": "\033[1;31m", "warning": "\033[33m", "info": "\033[36m", "ok": "\033[32m", "dim": "\033[2m"}
RESET = "\033[0m"
MAX_FINDING = 34  # "D001 distill-temperature-blowup" fits
MAX_STEPS = 13
MIN_MESSAGE = 24
ROOT_MARK = "*"
# Log text must not drive the terminal: escape sequences and other control characters become spaces.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def clean(text: object) -> str:
    """Log-derived text for the terminal, on one line: control characters as spaces, bidi controls and the
    undecodable bytes of a file name made visible (a terminal with a strict encoding cannot print them raw)."""
    from analyzer.report.format import visible_bidi, visible_bytes

    return " ".join(visible_bytes(visible_bidi(_CONTROL.sub(" ", str(text)))).split())


def clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 3)].rstrip() + "..."


def summary(diagnosis: Diagnosis, color: bool, width: int = 100) -> str:
    def paint(style: str, text: str) -> str:
        return f"{STYLE[style]}{text}{RESET}" if color and style in STYLE else text

    from analyzer.report import format as fmt

    roots = set(diagnosis.root_causes)
    rows = [(f.severity.value, clean(f"{f.code} {f.name}"), fmt.steps(f.first_step, f.last_step), clean(f.message),
             f.name in roots) for f in diagnosis.findings]
    lines = []
    if rows:
        name_w = min(MAX_FINDING, max(len("FINDING"), *(len(r[1]) for r in rows)))
        steps_w = min(MAX_STEPS, max(len("STEPS"), *(len(r[2]) for r in rows)))
        sev_w = len("critical")
        message_w = max(MIN_MESSAGE, width - (1 + sev_w + 2 + name_w + 2 + steps_w + 2))
        header = f" {'SEVERITY':<{sev_w}}  {'FINDING':<{name_w}}  {'STEPS':<{steps_w}}  MESSAGE"
        lines.append(paint("dim", header))
        indent = " " * (width - message_w)
        for severity, name, steps, message, is_root in rows:
            mark = ROOT_MARK if is_root else " "
            # The message is what the user came for: wrap it under its column rather than cut it.
            first, *rest = textwrap.wrap(message, message_w) or [""]
            lines.append(f"{mark}{paint(severity, f'{severity:<{sev_w}}')}  {clip(name, name_w):<{name_w}}  "
                         f"{clip(steps, steps_w):<{steps_w}}  {first}")
            lines.extend(indent + more for more in rest)
        if roots:
            lines.append(paint("dim", f"{ROOT_MARK} root cause"))
    worst = diagnosis.worst()
    level = worst.value if worst else "ok"
    lines.append(paint(level, "verdict: ") + clean(verdict(diagnosis)))
    rec_rows, _ = recommendations(diagnosis.findings)
    if rec_rows:
        # A healthy run's info-level suggestions are not a fix: say they are optional.
        label = "fix: " if fix_heading(diagnosis.findings)[1] == "" else "optional: "
        lines.append(label + clean(fix_line(rec_rows)))
    if diagnosis.errors:
        names = ", ".join(e.name for e in diagnosis.errors)
        lines.append(paint("critical", "detector errors: ") + clean(f"{len(diagnosis.errors)} crashed ({names})"))
    return "\n".join(lines)
