"""The terminal summary: a compact table of findings, root causes first, and a one-line verdict."""

from __future__ import annotations

import re
import textwrap

from analyzer.findings import Diagnosis, Severity
from analyzer.report.model import fix_heading, fix_line, no_fix_text, recommendations, verdict

STYLE = {"critical": "\033[1;31m", "warning": "\033[33m", "info": "\033[36m", "ok": "\033[32m", "dim": "\033[2m"}
RESET = "\033[0m"
MAX_FINDING = 34  # "D001 distill-temperature-blowup" fits
MIN_MESSAGE = 40  # a narrower message column reads as a ribbon of words: findings are stacked instead
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


BLIND_SPOT_LABEL = "  blind spot: "


def blind_spot_lines(messages, short: bool = False) -> list[str]:
    """One line per blind spot for the run overview. `short` (a terminal) keeps each one's lead clause: four HF
    Trainer blind spots, wrapped whole, took 17 lines at 80 columns above the findings they qualify, and report.md
    has each in full. A log file keeps each whole on its line, for grep. The caller wraps to the width."""
    from analyzer.report.format import lead_clause

    lines = []
    for message in messages:
        text = clean(message)
        if short:
            lead, rest = lead_clause(text)
            text = lead + ("..." if rest else "")
        lines.append(BLIND_SPOT_LABEL + text)
    return lines


def summary(diagnosis: Diagnosis, color: bool, width: int = 100, wrap: bool = False) -> str:
    """The findings table, the verdict and the fix. wrap=True (a terminal) also wraps the verdict and fix lines to
    `width`; a log file keeps each on one line, so `grep verdict:` finds all of it."""
    def paint(style: str, text: str) -> str:
        return f"{STYLE[style]}{text}{RESET}" if color and style in STYLE else text

    from analyzer.report import format as fmt

    roots = set(diagnosis.root_causes)
    rows = [(f.severity.value, clean(f"{f.code} {f.name}"), fmt.steps(f.first_step, f.last_step), clean(f.message),
             f.name in roots) for f in diagnosis.findings]
    phrases = [fmt.steps_phrase(f.first_step, f.last_step) for f in diagnosis.findings]
    lines = []
    if rows:
        name_w = min(MAX_FINDING, max(len("FINDING"), *(len(r[1]) for r in rows)))
        # Never cut: "1000000-15..." reads as a step that does not exist. Wide ranges leave less room for the
        # message, and a terminal too narrow for it stacks the findings instead.
        steps_w = max(len("STEPS"), *(len(r[2]) for r in rows))
        sev_w = len("critical")
        message_at = 1 + sev_w + 2 + name_w + 2 + steps_w + 2
        if width - message_at >= MIN_MESSAGE:
            message_w = width - message_at
            header = f" {'SEVERITY':<{sev_w}}  {'FINDING':<{name_w}}  {'STEPS':<{steps_w}}  MESSAGE"
            lines.append(paint("dim", header))
            for severity, name, steps, message, is_root in rows:
                mark = ROOT_MARK if is_root else " "
                # The message is what the user came for: wrap it under its column rather than cut it.
                first, *rest = textwrap.wrap(message, message_w, break_on_hyphens=False) or [""]
                lines.append(f"{mark}{paint(severity, f'{severity:<{sev_w}}')}  {clip(name, name_w):<{name_w}}  "
                             f"{steps:<{steps_w}}  {first}")
                lines.extend(" " * message_at + more for more in rest)
        else:
            # Too narrow for a message column (a split pane): each finding on its own line, its message below.
            indent = " " * (1 + sev_w + 2)
            for (severity, name, _, message, is_root), when in zip(rows, phrases):
                mark = ROOT_MARK if is_root else " "
                lines.append(f"{mark}{paint(severity, f'{severity:<{sev_w}}')}  {name}, {when}")
                lines.extend(textwrap.wrap(message, max(MIN_MESSAGE + len(indent), width), initial_indent=indent,
                                           subsequent_indent=indent, break_on_hyphens=False))
        if roots:
            lines.append(paint("dim", f"{ROOT_MARK} root cause"))
    worst = diagnosis.worst()
    level = worst.value if worst else "ok"

    def labelled(label: str, style: str, text: str) -> None:
        if not wrap:
            lines.append(paint(style, label) + text)
            return
        first, *rest = textwrap.wrap(label + text, max(MIN_MESSAGE, width), subsequent_indent="  ",
                                     break_on_hyphens=False)
        lines.append(paint(style, label) + first[len(label):])
        lines.extend(rest)

    labelled("verdict: ", level, clean(verdict(diagnosis)))
    rec_rows, _ = recommendations(diagnosis.findings)
    if rec_rows:
        # A healthy run's info-level suggestions are not a fix: say they are optional.
        label = "fix: " if fix_heading(diagnosis.findings)[1] == "" else "optional: "
        labelled(label, "", clean(fix_line(rec_rows)))
    elif worst in (Severity.WARNING, Severity.CRITICAL):
        # Silence reads as "nothing to do"; say that no finding names a setting, and where to read on.
        text = no_fix_text(diagnosis)
        labelled("fix: ", "", clean(text[:1].lower() + text[1:]))
    if diagnosis.errors:
        names = ", ".join(e.name for e in diagnosis.errors)
        labelled("detector errors: ", "critical", clean(f"{len(diagnosis.errors)} crashed ({names})"))
    return "\n".join(lines)
