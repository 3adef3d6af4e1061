"""The report as plain data: every sentence, table row and figure a template shows, computed here, once.

Templates only format these objects (coverage.py's model): whatever needs a decision, a number or a sort order is
decided in `build_report`, so the markdown and HTML reports cannot disagree and tests can check content without
parsing either.
"""

from __future__ import annotations

import base64
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from analyzer.findings import Diagnosis, Finding, Recommendation, Severity
from analyzer.report import format as fmt

MAX_EVIDENCE_ROWS = 8  # log lines shown per finding; the rest are counted (findings.json has them all)
MAX_NOTES = 20  # ingest notes shown in the run facts
MAX_NUMBER_TEXT = 24  # a finding value longer than this is text, not a number: shown on its own line
MAX_HPARAM_TEXT = 160  # a free-text hparam (a comment, a path) is cut in the facts; findings.json keeps it whole
MAX_VERDICT_NAMES = 4  # consequences named in the verdict; a sentence, not a list
MAX_VERDICT_ROOTS = 3  # root causes the verdict describes; more are only named
MAX_MARKS = 4  # root-cause / critical onsets marked on the overview plot
WHOLE_RUN = 0.8  # a finding spanning more of the run than this is not shaded on its plots

# Findings that say the run's numbers (and so its later checkpoints) went NaN/Inf.
NONFINITE_FINDINGS = ("nonfinite-onset", "checkpoint-nonfinite")

SEVERITY_LABEL = {"critical": "Critical", "warning": "Warning", "info": "Info"}


# --- the objects templates see ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class FigureView:
    """One rendered figure: SVG text, written as figures/<id>.svg beside report.md, a data: URI in the HTML."""

    id: str
    title: str
    caption: str
    svg: str

    @property
    def file(self) -> str:
        return f"figures/{self.id}.svg"

    @property
    def data_uri(self) -> str:
        return "data:image/svg+xml;base64," + base64.b64encode(self.svg.encode("utf-8")).decode("ascii")


@dataclass(frozen=True)
class ChainStep:
    """One finding in a root cause's chain; depth 0 is the root, depth n follows from a finding at depth n-1."""

    depth: int
    name: str
    code: str
    severity: str
    steps: str
    when: str  # "step 436" / "steps 100-600"
    first_step: int | None
    message: str
    anchor: str
    because: tuple[str, ...]  # the causes of this step among the chain


@dataclass(frozen=True)
class RootCause:
    name: str
    code: str
    severity: str
    first_step: int | None
    steps: str
    when: str
    message: str
    anchor: str
    chain: tuple[ChainStep, ...]  # the root first, then what it led to, in pre-order
    arrow: str  # the longest path, one line: "a (step 0) -> b (step 120) -> c (step 436)"


@dataclass(frozen=True)
class RecommendationRow:
    hparam: str
    current: str
    suggested: str
    rationale: str
    source: str  # the finding that recommends it
    source_anchor: str
    also: str = ""  # other findings that recommend a change of the same hparam, and what they suggest


@dataclass(frozen=True)
class Patch:
    json: str  # {"temperature": 2.0}
    overrides: str  # --set temperature=2.0
    command: str  # reproduce-run RUN_DIR --set temperature=2.0; "" when the reference trainer cannot re-run this run
    how: str  # how to apply the change when there is no command to run


@dataclass(frozen=True)
class Row:
    name: str
    value: str


@dataclass(frozen=True)
class BlindSpotView:
    """What the run cannot show: its lead clause ("HF Trainer filters NaN/Inf losses out of log_history"), the rest
    of the message, and the detectors it weakens."""

    lead: str
    detail: str
    affects: str  # "nonfinite-onset, grad-explosion"


@dataclass(frozen=True)
class EvidenceRow:
    location: str  # train.log:12
    text: str


@dataclass(frozen=True)
class Table:
    """A small table a detector's partial shows (e.g. T -> T^2 -> KD loss)."""

    title: str
    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    note: str = ""


@dataclass(frozen=True)
class FindingView:
    index: int
    anchor: str
    code: str
    name: str
    severity: str
    severity_label: str
    confidence: str
    message: str
    steps: str
    when: str
    is_root: bool
    caused_by: tuple[str, ...]
    leads_to: tuple[str, ...]
    metrics: tuple[Row, ...]  # the finding's numbers (short values)
    details: tuple[Row, ...]  # its longer values, shown as lines
    recommendations: tuple[RecommendationRow, ...]
    evidence: tuple[EvidenceRow, ...]
    evidence_more: int
    figures: tuple[FigureView, ...]
    missing_plots: tuple[str, ...]  # plots this finding would show, and the metric the run lacks for each
    table: Table | None = None
    brief: str = ""  # the message cut to a table cell (the CI summary); the report gives it whole

    @property
    def evidence_block(self) -> str:
        """The cited lines as one aligned text block: `train.log:436  [Warning] lm_loss ...`."""
        width = max((len(e.location) for e in self.evidence), default=0)
        return "\n".join(f"{e.location.ljust(width)}  {_one_line(e.text)}".rstrip() for e in self.evidence)


@dataclass(frozen=True)
class CheckpointRow:
    path: str
    step: str
    format: str
    state: str  # "finite", "NaN/Inf in 12 values", "not inspected", or why it could not be read
    good: bool | None  # True finite, False non-finite or unreadable, None not inspected


@dataclass(frozen=True)
class RunFacts:
    path: str
    name: str
    status: str
    formats: str
    steps: str
    n_points: str
    metrics: str
    sources: tuple[str, ...]  # the files the metrics came from (config, events and checkpoints are read too)
    hparams: tuple[Row, ...]
    checkpoints: tuple[CheckpointRow, ...]
    last_good: CheckpointRow | None
    last_good_reason: str
    notes: tuple[str, ...]
    notes_more: int


@dataclass(frozen=True)
class Report:
    title: str
    run_name: str
    version: str
    worst: str  # critical | warning | info | ok
    worst_label: str
    verdict: str
    fix_label: str  # "Recommended change", or "Optional change" when only info-level findings suggest one
    fix_note: str  # why a change is optional; "" when it is recommended
    fix: str  # "temperature 3.0 -> 2.0", or "" when nothing to change
    fix_items: tuple[str, ...]  # the same, one change each
    no_fix: str  # what the report says where no finding recommends a change
    status: str
    counts: tuple[Row, ...]  # ("critical", "2"), ...
    overview: FigureView | None
    root_causes: tuple[RootCause, ...]
    recommendations: tuple[RecommendationRow, ...]
    patch: Patch | None
    findings: tuple[FindingView, ...]
    blind_spots: tuple[BlindSpotView, ...]
    skipped: tuple[Row, ...]  # (detector, reason)
    errors: tuple[Row, ...]  # (detector, error)
    facts: RunFacts


def _one_line(text: str) -> str:
    """A log line as written (its spacing is evidence too), minus what would break a line: CR, LF, controls."""
    return re.sub(r"[\x00-\x08\x0a-\x1f\x7f]", " ", text.replace("\t", "    "))


# --- building it ------------------------------------------------------------------------------------------------

def build_report(diagnosis: Diagnosis, run=None, *, version: str = "", figures: bool = True,
                 draw: bool = True) -> Report:
    """The report for one diagnosis. `run` (an analyzer.run.Run) adds plots, checkpoint stats and ingest notes.

    figures=False leaves plots out; draw=False keeps them listed with empty SVG (golden tests compare text only).
    """
    findings = diagnosis.findings
    anchors = {id(f): _anchor(i, f) for i, f in enumerate(findings, start=1)}
    first_anchor = {}
    for f in findings:
        first_anchor.setdefault(f.name, anchors[id(f)])
    roots = set(diagnosis.root_causes)
    series = _SeriesCache(run, draw)
    facts = _facts(diagnosis, run)
    rec_rows, patch_values = recommendations(findings, first_anchor)
    fix_label, fix_note = fix_heading(findings)
    views = tuple(
        _finding_view(i, f, findings, anchors[id(f)], roots, first_anchor, series, facts, run, figures,
                      (diagnosis.run.first_step, diagnosis.run.last_step))
        for i, f in enumerate(findings, start=1))
    worst = diagnosis.worst()
    return Report(
        title=f"Postmortem: {diagnosis.run.name}",
        run_name=diagnosis.run.name,
        version=version,
        worst=worst.value if worst else "ok",
        worst_label=SEVERITY_LABEL[worst.value] if worst else "OK",
        verdict=verdict(diagnosis),
        fix_label=fix_label,
        fix_note=fix_note,
        fix=fix_line(rec_rows),
        fix_items=tuple(change(r) for r in rec_rows),
        no_fix=no_fix_text(diagnosis),
        status=_status(diagnosis),
        counts=tuple(Row(s.value, str(sum(f.severity is s for f in findings))) for s in Severity),
        overview=_overview(diagnosis, series, facts, run) if figures else None,
        root_causes=_root_causes(diagnosis, first_anchor),
        recommendations=rec_rows,
        patch=_patch(patch_values, diagnosis.run.path, reference_trainer_run(diagnosis)),
        findings=views,
        blind_spots=tuple(BlindSpotView(*fmt.lead_clause(b.message), ", ".join(b.affects))
                          for b in diagnosis.blind_spots),
        skipped=tuple(Row(s.name, s.reason) for s in diagnosis.skipped),
        errors=tuple(Row(e.name, e.error) for e in diagnosis.errors),
        facts=facts,
    )


def _anchor(index: int, finding: Finding) -> str:
    return f"f{index}-" + re.sub(r"[^a-z0-9-]+", "-", finding.name.lower()).strip("-")


# --- verdict ------------------------------------------------------------------------------------------------------

def verdict(diagnosis: Diagnosis) -> str:
    """The whole diagnosis in a sentence or two: what went wrong, with its numbers, when, and what followed."""
    findings = diagnosis.findings
    run = diagnosis.run
    span = fmt.steps(run.first_step, run.last_step)
    could_not = len(diagnosis.skipped) + len(diagnosis.errors)
    caveat = f" ({could_not} detector{'s' if could_not != 1 else ''} could not run)" if could_not else ""
    worst = diagnosis.worst()
    if worst is None:
        if run.n_points == 0:
            return f"Nothing to judge: no metrics were found in this run{caveat}."
        return f"No problem found in steps {span}{caveat}."
    if worst is Severity.INFO:
        names = _and(list(dict.fromkeys(f.name for f in findings)))
        return f"No warning or critical finding in steps {span}; worth knowing: {names}{caveat}."
    lead = "The run is broken" if worst is Severity.CRITICAL else "The run is degraded"
    by_name: dict[str, Finding] = {}
    for f in findings:
        by_name.setdefault(f.name, f)
    roots = [by_name[n] for n in dict.fromkeys(diagnosis.root_causes) if n in by_name]
    consequences = sorted((f for name, f in by_name.items() if name not in diagnosis.root_causes
                           and f.severity is not Severity.INFO), key=_step_key)
    led = ""
    named: list[str] = []
    if consequences:
        named = [_named_at(f) for f in consequences[:MAX_VERDICT_NAMES]]
        if len(consequences) > MAX_VERDICT_NAMES:
            named.append(f"{len(consequences) - MAX_VERDICT_NAMES} more")
        led = ", which led to " + _and(named)
    if len(roots) == 1:
        return f"{lead}: {_root_clause(roots[0], VERDICT_CLAUSE)}{led}."
    if len(roots) <= MAX_VERDICT_ROOTS:
        # Each root cause says what happened, with its numbers: a list of names tells a reader nothing.
        # Numbered, because a clause may hold a semicolon of its own ("lr 1e-5 is too low; the median update ...").
        clauses = "; ".join(f"({i}) {_root_clause(r, ROOT_CLAUSE)}" for i, r in enumerate(roots, start=1))
        led = f". These led to {_and(named)}" if consequences else ""
        return f"{lead} by {len(roots)} root causes: {clauses}{led}."
    if roots:
        return f"{lead} by {len(roots)} root causes: {_and([_named_from(r) for r in roots])}{led}."
    return f"{lead}: {_and([_named_at(f) for f in findings if f.severity is not Severity.INFO])}."


def fix_line(rows: Sequence[RecommendationRow]) -> str:
    return "; ".join(change(r) for r in rows)


def change(row: RecommendationRow) -> str:
    """One change as a reader scans it: `lr 0.3 -> 0.15`; `max_grad_norm (not recorded) -> 1.0`."""
    current = f"({NOT_RECORDED})" if row.current == NOT_RECORDED else row.current
    return f"{row.hparam} {current} -> {row.suggested}"


def no_fix_text(diagnosis: Diagnosis) -> str:
    """Where nothing recommends a change: say so, and for a run that went wrong, where to read what it can mean
    (`postmortem explain` gives the detector's own account: a plateau at chance level points at labels or loss)."""
    worst = diagnosis.worst()
    if worst not in (Severity.WARNING, Severity.CRITICAL):
        return "No hyperparameter change is recommended."
    lead = next((n for n in diagnosis.root_causes), None) or next(
        f.name for f in diagnosis.findings if f.severity is worst)
    return (f"No hyperparameter change is recommended: no finding names a setting that caused this. "
            f"`postmortem explain {lead}` says what {lead} can mean and what to check.")


OPTIONAL_FIX_NOTE = ("Only info-level findings suggest this: nothing at warning or critical level was found, so the "
                     "run needs no fix; try the change if the finding behind it matters to you.")


def fix_heading(findings: Sequence[Finding]) -> tuple[str, str]:
    """"Recommended change", or "Optional change" (and why) when every finding that suggests one is only info:
    a healthy run's report must not read as if something had to be fixed."""
    recommending = [f for f in findings if f.recommendations]
    if recommending and all(f.severity is Severity.INFO for f in recommending):
        return "Optional change", OPTIONAL_FIX_NOTE
    return "Recommended change", ""


# The format the reference trainer's run dirs are read as; only such runs can be re-run by `reproduce-run`.
REFERENCE_FORMAT = "postmortem-run"


def reference_trainer_run(diagnosis: Diagnosis) -> bool:
    """Whether `reproduce-run` can re-run this run: a run dir in the trainer's format with its run.json (status)."""
    return REFERENCE_FORMAT in diagnosis.run.formats and diagnosis.run.status is not None


VERDICT_CLAUSE = 160  # characters of the root cause's message the verdict quotes; the finding holds the rest
ROOT_CLAUSE = 110  # the same for each of several root causes: the verdict stays one readable sentence
SHORT_LEAD = 40  # a lead clause shorter than this says what happened but not how bad it is
MIN_DROPPED_ASIDE = 30  # a parenthesis this long is left out of a verdict that is too long; "(step 0)" stays
MIN_KEPT_CLAUSE = 0.5  # a clause cut at a phrase boundary keeps at least this share of the room, else words are cut
# Where a clause may end early without leaving half a phrase: before an aside, a comma or a "while"/"and" clause.
_PHRASE_BOUNDARY = re.compile(r" \(|, | while | and | but ")


def _root_clause(root: Finding, limit: int) -> str:
    """`what happened (name, from step N)`; a clause that already says from which step leaves that out."""
    body = _sentence_body(root.message, limit)
    if root.first_step is not None and re.search(rf"\bsteps? {root.first_step}\b", body):
        return f"{body} ({root.name})"
    return f"{body} ({root.name}, {_from(root)})"


def _sentence_body(message: str, limit: int = VERDICT_CLAUSE) -> str:
    """The lead clause of a finding's message: a verdict is one short sentence, the details come below it."""
    text = " ".join(message.split()).rstrip(".")
    for sep in ("; ", ": "):
        parts = text.split(sep, 2)
        head = parts[0]
        if len(head) >= 20:
            # "loss stopped improving" alone hides how bad it is ("it stayed near 7.6 ... at chance level"): a short
            # lead always takes its next clause along, shortened below like any long clause.
            # An aside does not say how bad it is: "lr 5.00e-4 (4.75e-4 effective after warmup) is too low".
            if sep == ": " and len(re.sub(r"\s*\([^()]*\)", "", head)) < SHORT_LEAD and len(parts) > 1:
                head = f"{head}; {parts[1]}"
            text = head
    return _lower_first(_shorten(text, limit))


def _shorten(text: str, limit: int) -> str:
    """At most `limit` characters: long asides go first, then the clause ends at a phrase boundary (or a word)."""
    if len(text) > limit:
        # A long parenthesis (a list of tensor names, a quoted line) is detail: drop it before cutting words.
        text = " ".join(re.sub(r"\s*\([^()]{%d,}\)" % MIN_DROPPED_ASIDE, "", text).split())
    if len(text) <= limit:
        return text
    ends = [m.start() for m in _PHRASE_BOUNDARY.finditer(text, 0, limit + 1) if m.start() >= MIN_KEPT_CLAUSE * limit]
    if ends:
        return text[: ends[-1]].rstrip(" ,;:")
    return text[: limit - 3].rsplit(" ", 1)[0] + "..."


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:] if text[:2].isalpha() and not text[:2].isupper() else text


def _named_at(f: Finding) -> str:
    if f.first_step is None:
        return f.name
    return f"{f.name} (step {f.first_step})"


def _named_from(f: Finding) -> str:
    return f"{f.name} ({_from(f)})"


def _from(f: Finding) -> str:
    return "whole run" if f.first_step is None else f"from step {f.first_step}"


def _and(items: Sequence[str]) -> str:
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _status(diagnosis: Diagnosis) -> str:
    run = diagnosis.run
    status = run.status or "not recorded by the run"
    points = f"{fmt.count(run.n_points)} points"
    return f"{status}; steps {fmt.steps(run.first_step, run.last_step)}, {points}"


# --- root causes and their chains ---------------------------------------------------------------------------------

def _root_causes(diagnosis: Diagnosis, anchors: Mapping[str, str]) -> tuple[RootCause, ...]:
    by_name: dict[str, Finding] = {}
    for f in diagnosis.findings:  # a detector may report twice (two spikes): its first finding stands for it
        by_name.setdefault(f.name, f)
    effects: dict[str, list[str]] = {}
    for f in diagnosis.findings:
        for cause in f.caused_by:
            effects.setdefault(cause, []).append(f.name)
    out = []
    for root_name in dict.fromkeys(diagnosis.root_causes):
        root = by_name.get(root_name)
        if root is None:
            continue
        depth = _depths(root_name, effects)
        # Each finding hangs under its deepest cause in the chain, so a -> b -> c is drawn as a path, not a fan.
        parent = {}
        for name in depth:
            if name == root_name:
                continue
            causes = [c for c in by_name[name].caused_by if c in depth]
            parent[name] = max(causes, key=lambda c: (depth[c], c))
        children: dict[str, list[str]] = {}
        for name, up in parent.items():
            children.setdefault(up, []).append(name)
        order: list[str] = []

        def visit(name: str) -> None:
            order.append(name)
            for child in sorted(children.get(name, ()), key=lambda n: _step_key(by_name[n])):
                visit(child)

        visit(root_name)
        chain = tuple(
            ChainStep(depth=depth[n], name=n, code=by_name[n].code, severity=by_name[n].severity.value,
                      steps=fmt.steps(by_name[n].first_step, by_name[n].last_step),
                      when=fmt.steps_phrase(by_name[n].first_step, by_name[n].last_step),
                      first_step=by_name[n].first_step, message=by_name[n].message, anchor=anchors[n],
                      because=tuple(c for c in by_name[n].caused_by if c in depth))
            for n in order)
        out.append(RootCause(
            name=root.name, code=root.code, severity=root.severity.value, first_step=root.first_step,
            steps=fmt.steps(root.first_step, root.last_step), when=fmt.steps_phrase(root.first_step, root.last_step),
            message=root.message, anchor=anchors[root.name],
            chain=chain, arrow=" -> ".join(_named_at(by_name[n]) for n in _longest_path(root_name, effects, by_name)),
        ))
    return tuple(out)


def _step_key(f: Finding) -> tuple:
    return (f.first_step if f.first_step is not None else -1, f.name)


def _depths(root: str, effects: Mapping[str, Sequence[str]]) -> dict[str, int]:
    """Longest distance from the root to each finding it reaches (the cause graph is acyclic; a cycle is cut)."""
    depth = {root: 0}
    frontier = [root]
    for _ in range(len(effects) + 1):
        nxt = []
        for name in frontier:
            for effect in effects.get(name, ()):
                if effect != root and depth.get(effect, -1) < depth[name] + 1 and depth[name] < len(effects):
                    depth[effect] = depth[name] + 1
                    nxt.append(effect)
        if not nxt:
            break
        frontier = nxt
    return depth


def _longest_path(root: str, effects: Mapping[str, Sequence[str]], by_name: Mapping[str, Finding]) -> list[str]:
    """The chain from the root to its deepest consequence; among equally long ones, the earliest steps."""
    reach = _depths(root, effects)
    height: dict[str, int] = {}

    def tall(name: str, seen: frozenset) -> int:
        if name not in height:
            below = [tall(e, seen | {name}) for e in effects.get(name, ()) if e in reach and e not in seen]
            height[name] = 1 + max(below, default=0)
        return height[name]

    path = [root]
    while True:
        nxt = [e for e in effects.get(path[-1], ()) if e in reach and e not in path]
        if not nxt:
            return path
        path.append(min(nxt, key=lambda n: (-tall(n, frozenset(path)), _step_key(by_name[n]))))


# --- recommendations ----------------------------------------------------------------------------------------------

def recommendations(findings: Sequence[Finding], anchors: Mapping[str, str] | None = None
                    ) -> tuple[tuple[RecommendationRow, ...], dict[str, Any]]:
    """One row per hparam, from the first finding (root causes come first) that recommends it, others noted; and
    the raw suggested values for the patch."""
    first: dict[str, tuple[Any, Finding]] = {}
    also: dict[str, list[str]] = {}
    for f in findings:
        for r in f.recommendations:
            if r.hparam not in first:
                first[r.hparam] = (r, f)
            elif f.name != first[r.hparam][1].name and not _same(r.suggested, first[r.hparam][0].suggested):
                also.setdefault(r.hparam, []).append(f"{f.name} suggests {fmt.number(r.suggested, fmt.PATCH_DIGITS)}")
    rows = tuple(
        RecommendationRow(h, *current_and_suggested(r), rationale=r.rationale, source=f.name,
                          source_anchor=(anchors or {}).get(f.name, ""), also="; ".join(also.get(h, [])))
        for h, (r, f) in first.items())
    return rows, {h: fmt.patch_value(r.suggested) for h, (r, _) in first.items()}


NOT_RECORDED = "not recorded"  # a current value the run's files do not give


def current_value(current: Any, suggested: Any) -> str:
    """The current value as the suggested one is written: `5000 -> 1000`, not `5000.0 -> 1000`; `5e-4 -> 1e-3`,
    not `5e-4 -> 0.001`; unknown says so."""
    if current is None:
        return NOT_RECORDED
    if (isinstance(suggested, int) and not isinstance(suggested, bool) and isinstance(current, float)
            and current.is_integer()):
        current = int(current)
    return fmt.number_pair(current, suggested)[0]


def current_and_suggested(r: Recommendation) -> tuple[str, str]:
    """A recommendation's two values as the report writes them, in one notation."""
    return current_value(r.current, r.suggested), fmt.number_pair(r.current, r.suggested)[1]


def _same(a: Any, b: Any) -> bool:
    return fmt.number(a, fmt.PATCH_DIGITS) == fmt.number(b, fmt.PATCH_DIGITS)


APPLY_BY_HAND = ("Set these in your training configuration (the names are postmortem's: lr is the peak learning "
                 "rate, grad_accum the gradient accumulation steps, max_grad_norm the clipping threshold) and re-run; "
                 "reproduce-run re-runs only runs written by postmortem's reference trainer.")


def _patch(values: Mapping[str, Any], run_path: str, reproducible: bool = True) -> Patch | None:
    if not values:
        return None
    overrides = " ".join(f"--set {h}={fmt.cli_value(v)}" for h, v in values.items())
    return Patch(
        json=fmt.json_text(dict(values)),
        overrides=overrides,
        command=f"reproduce-run {fmt.shell_quote(run_path)} {overrides}" if reproducible else "",
        how="" if reproducible else APPLY_BY_HAND,
    )


# --- one finding --------------------------------------------------------------------------------------------------

def _finding_view(index: int, f: Finding, findings: Sequence[Finding], anchor: str, roots: set[str],
                  anchors: Mapping[str, str], series: "_SeriesCache", facts: RunFacts, run, figures: bool,
                  facts_span: tuple[int | None, int | None] = (None, None)) -> FindingView:
    from analyzer.report import plots

    leads_to = tuple(dict.fromkeys(g.name for g in findings if f.name in g.caused_by))
    numbers = [Row(str(k), fmt.number(v)) for k, v in f.metrics.items()]
    # Short values read as a grid of numbers; a sentence-long value (a cause, a path) gets its own line.
    metrics = tuple(r for r in numbers if len(r.value) <= MAX_NUMBER_TEXT)
    details = tuple(r for r in numbers if len(r.value) > MAX_NUMBER_TEXT)
    recs = tuple(
        RecommendationRow(r.hparam, *current_and_suggested(r), r.rationale, f.name, anchor)
        for r in f.recommendations)
    cited = tuple(dict.fromkeys(  # a detector may cite one line twice (two signals on one record)
        EvidenceRow(f"{e.file}:{e.line}" if e.line is not None else e.file, _cited_text(e.text))
        for e in f.evidence))
    evidence = cited[:MAX_EVIDENCE_ROWS]
    available = series.metrics
    specs = plots.plots_for(f.name, available, f.message)
    subject = _nonfinite_subject(f, series, run)
    shown = {m for spec in specs for m in spec.metrics}
    if "loss" in shown:
        shown.add("eval_loss")  # the loss plot draws it too
    if subject in shown:
        subject = None  # already plotted (grad_norm; eval_loss on the loss plot): the usual plots show it
    if subject is not None:
        # The metric that went NaN/Inf first, then the loss: seed 002's lm_loss was clamped to 0.0, which the
        # training loss (a mix of terms) and the gradient norm hardly show.
        specs = (plots.metric_plot(subject), *[s for s in specs if s.name == "loss"])[:plots.MAX_PLOTS_PER_FINDING]
    missing = tuple(
        f"{plots.PLOTS[p].title.lower()}: the run logs no {_missing(plots.PLOTS[p], available)}"
        for p in plots.wanted_plots(f.name, f.message)[:plots.MAX_PLOTS_PER_FINDING]
        if not plots.PLOTS[p].available(available)) if run is not None else ()
    figs: tuple[FigureView, ...] = ()
    if figures and specs:
        when = fmt.steps_phrase(f.first_step, f.last_step)
        # One step is drawn as a dashed line, a span as a shaded band: the caption says which the reader sees.
        single = f.first_step is None or f.last_step is None or f.last_step <= f.first_step
        window, note = (f.first_step, f.last_step), f"{'dashed line' if single else 'shaded'}: {f.name} ({when})"
        if _covers_run(f, facts_span):
            window, note = None, f"{f.name} spans the whole run ({when})"
        # A restart point matters for these: their plots keep the whole run, checkpoints and all.
        zoom = None if f.name in plots.CHECKPOINT_FINDINGS else _zoom(f, facts_span)
        if zoom is not None:
            note += f"; zoomed to steps {zoom[0]}-{zoom[1]}"
        data = series.plot_input(
            [m for s in specs for m in s.metrics] + ["eval_loss"], window=window, window_label=f"{f.name} ({when})",
            with_checkpoints=f.name in plots.CHECKPOINT_FINDINGS, facts=facts, references=_chance_line([f], run),
            hidden_nonfinite=_hidden_nonfinite(run) if subject is not None else (), zoom=zoom)
        figs = tuple(
            FigureView(id=f"{index:02d}-{f.name}-{spec.name}", title=spec.title, caption=f"{spec.title}; {note}",
                       svg=series.svg([spec], data))
            for spec in specs)
    table_builder = TABLES.get(f.name)
    return FindingView(
        index=index, anchor=anchor, code=f.code, name=f.name, severity=f.severity.value,
        severity_label=SEVERITY_LABEL[f.severity.value], confidence=f.confidence.value, message=f.message,
        steps=fmt.steps(f.first_step, f.last_step), when=fmt.steps_phrase(f.first_step, f.last_step),
        is_root=f.name in roots, caused_by=tuple(f.caused_by),
        leads_to=leads_to, metrics=metrics, details=details, recommendations=recs, evidence=evidence,
        evidence_more=max(0, len(cited) - MAX_EVIDENCE_ROWS), figures=figs, missing_plots=missing,
        table=table_builder(f, series, facts, run) if table_builder else None, brief=brief_message(f.message),
    )


BRIEF_MESSAGE = 300  # characters of a finding's message in a summary table cell


def brief_message(message: str, limit: int = BRIEF_MESSAGE) -> str:
    """The message cut at a word (not inside one) to fit a table cell, marked where it was cut."""
    text = " ".join(message.split())
    return text if len(text) <= limit else text[: limit - 4].rsplit(" ", 1)[0].rstrip(",;:") + " ..."


CUT_MARK = " …"


def _cited_text(text: str) -> str:
    """A cited line as diagnose kept it, marked where diagnose cut it short (findings.json keeps the cut text)."""
    from analyzer.diagnose import MAX_EVIDENCE_LINE

    return text + CUT_MARK if len(text) >= MAX_EVIDENCE_LINE else text


ZOOM_BELOW = 0.05  # a finding shorter than this share of the run is drawn zoomed in: else it is a sliver
ZOOM_CONTEXT = 10  # ... with this many times its own length on each side, for the level before and after
ZOOM_MIN_CONTEXT = 0.1  # ... and at least this share of the run on each side


def _zoom(f: Finding, span: tuple[int | None, int | None]) -> tuple[int, int] | None:
    """The steps a short finding's plots show: bloom176b's 3-step spike at 31219 in steps 12695-45000 was a single
    vertical line; zoomed, the level before, the spike and the recovery are each visible."""
    first, last = span
    if None in (first, last, f.first_step) or last <= first:
        return None
    end = f.last_step if f.last_step is not None else f.first_step
    length = max(end - f.first_step, 1)
    if length >= ZOOM_BELOW * (last - first):
        return None
    pad = max(ZOOM_CONTEXT * length, int(ZOOM_MIN_CONTEXT * (last - first)))
    low, high = max(first, f.first_step - pad), min(last, end + pad)
    return (low, high) if (low, high) != (first, last) else None


def _covers_run(f: Finding, span: tuple[int | None, int | None]) -> bool:
    """A finding over most of the run (a setting, a run-long oscillation): shading it would shade everything."""
    first, last = span
    if None in (first, last, f.first_step, f.last_step) or last <= first:
        return False
    return (f.last_step - f.first_step) > WHOLE_RUN * (last - first)


def _missing(spec, available) -> str:
    from analyzer.report.plots import DERIVED

    lacking = [DERIVED.get(m, m) for m in spec.requires if m not in available]
    if spec.any_of and not any(m in available for m in spec.any_of):
        lacking.append(" or ".join(spec.any_of))
    return " and ".join(lacking)


def _overview(diagnosis: Diagnosis, series: "_SeriesCache", facts: RunFacts, run) -> FigureView | None:
    """Loss (and grad norm, else lr) over the whole run, with the onsets of root causes and critical findings."""
    from analyzer.report import plots

    if run is None:
        return None
    specs = [plots.PLOTS[n] for n in ("loss", "grad_norm", "lr") if plots.PLOTS[n].available(series.metrics)][:2]
    if not specs:
        return None
    marked = []
    names: dict[str, str] = {}
    for f in diagnosis.findings:
        if f.first_step is None or not (f.name in diagnosis.root_causes or f.severity is Severity.CRITICAL):
            continue
        if f.first_step != diagnosis.run.first_step and all(step != f.first_step for step, _ in marked):
            marked.append((f.first_step, f.code))
            names[f.code] = f.name
    marked = sorted(marked)[:MAX_MARKS]
    leading = [f for f in diagnosis.findings if f.name in diagnosis.root_causes or f.severity is Severity.CRITICAL]
    data = series.plot_input([m for s in specs for m in s.metrics] + ["eval_loss"], marks=tuple(marked),
                             with_checkpoints=True, facts=facts, references=_chance_line(leading, run))
    # One clause per finding kind: pl_slm_resume's caption read "loss-plateau (L002) began (step 101549),
    # loss-plateau (L002) began (step 112591)".
    steps_of: dict[str, list[int]] = {}
    for step, code in marked:
        steps_of.setdefault(code, []).append(step)
    caption = "The whole run" + (": dotted lines mark where " + ", ".join(
        f"{names[code]} ({code}) began ({'step' if len(at) == 1 else 'steps'} {_and([str(s) for s in at])})"
        for code, at in steps_of.items()) if marked else "")
    return FigureView(id="00-overview", title="Run overview", caption=caption,
                      svg=series.svg(specs, data))


def _chance_line(findings: Sequence[Finding], run) -> tuple[tuple[float, str], ...]:
    """The chance level the loss plot shows, as the findings state it ("at chance level ln(4) = 1.386", implied by
    the loss where no hparam gives the classes), else as the detectors derive it from the run's hparams."""
    for f in findings:
        value, classes = f.metrics.get("chance_level"), f.metrics.get("chance_classes", f.metrics.get("classes"))
        if _is_number(value) and _is_number(classes) and classes >= 2:
            unit = "log2" if math.isclose(value, math.log2(classes), rel_tol=1e-6) else "ln"
            return ((float(value), f"chance level {unit}({int(classes)}) = {fmt.number(float(value))}"),)
    if run is not None:
        from analyzer.detectors.stats import chance_level

        found = chance_level(run)
        if found is not None:
            return ((found.value, f"chance level {found.describe()}"),)
    return ()


class _SeriesCache:
    """The run's series as numpy arrays, each pulled from the Run once (plots and tables share them)."""

    def __init__(self, run, draw: bool = True):
        self.run = run
        self.draw = draw
        self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._svgs: dict[tuple, str] = {}
        self.metrics: set[str] = set(run.metrics) if run is not None else set()
        self.labels: dict[str, str] = {}
        self._derived: dict[str, Any] = {}
        if run is not None:
            from analyzer.detectors.throughput_drop import speed
            from analyzer.report.plots import SPEED

            found = speed(run)  # the plot shows the speed the detector judged, whatever it was derived from
            if found is not None:
                self.metrics.add(SPEED)
                self.labels[SPEED] = found.label
                self._derived[SPEED] = found.series

    def get(self, metric: str) -> tuple[np.ndarray, np.ndarray] | None:
        if metric not in self.metrics:
            return None
        if metric not in self._cache:
            s = self._derived[metric] if metric in self._derived else self.run.series(metric)
            self._cache[metric] = (s.index.to_numpy(), s.to_numpy(dtype="float64"))
        return self._cache[metric]

    def svg(self, specs, data) -> str:
        """Rendered once per distinct plot: findings spanning the whole run share an unshaded figure."""
        from analyzer.report.plots import render_svg

        if not self.draw:
            return ""
        key = (tuple(s.name for s in specs), data.window, data.window_label if data.window else "", data.marks,
               data.checkpoints, data.references, data.hidden_nonfinite, data.zoom)
        if key not in self._svgs:
            self._svgs[key] = render_svg(specs, data)
        return self._svgs[key]

    def plot_input(self, metrics: Sequence[str], *, window=None, window_label: str = "", marks=(),
                   with_checkpoints: bool = False, facts: RunFacts | None = None, references=(),
                   hidden_nonfinite=(), zoom: tuple[int, int] | None = None):
        """What a plot draws; `zoom` (first, last step) keeps only the steps in that range, so the axes fit them."""
        from analyzer.report.plots import PlotInput

        def inside(step) -> bool:
            return zoom is None or zoom[0] <= step <= zoom[1]

        data = {m: self.get(m) for m in dict.fromkeys(metrics) if m in self.metrics}
        if zoom is not None:
            data = {m: (steps[(steps >= zoom[0]) & (steps <= zoom[1])], values[(steps >= zoom[0]) & (steps <= zoom[1])])
                    for m, (steps, values) in data.items()}
        run = self.run
        checkpoints = ()
        if with_checkpoints and run is not None:
            checkpoints = tuple((c.step, not (c.error or (c.stats is not None and c.stats.nonfinite)))
                                for c in run.checkpoints if c.step is not None and inside(c.step))
        overflow = tuple(e.step for e in run.events_of("overflow")
                         if e.step is not None and inside(e.step)) if run is not None else ()
        hidden = tuple((m, tuple(s for s in steps if inside(s))) for m, steps in hidden_nonfinite)
        hparams = {k: h.value for k, h in run.hparams.items()} if run is not None else {}
        return PlotInput(series=data, hparams=hparams,
                         window=window, window_label=window_label, marks=tuple(marks), checkpoints=checkpoints,
                         overflow_steps=overflow, labels={m: self.labels[m] for m in data if m in self.labels},
                         references=tuple(references), hidden_nonfinite=hidden, zoom=zoom)


# --- tables that a detector's partial shows -----------------------------------------------------------------------

SAME_KD_TERM = 0.01  # relative gap under which the logged KD median and raw KL x T^2 are the same number

HIDDEN_KINDS = {"nan": "NaN reported in the log", "nan_clamp": "NaN clamped in the log",
                "skipped_step": "step skipped in the log"}

def _temperature_table(f: Finding, series: _SeriesCache, facts: RunFacts, run) -> Table | None:
    """T -> T^2 -> KD loss at the run's median raw KL, for the current and suggested temperatures (seed 002)."""
    temps = []
    for r in f.recommendations:
        if r.hparam in ("temperature", "min_temperature"):
            temps += [r.current, r.suggested]
    current = f.metrics.get("temperature")
    if current is not None:
        temps.insert(0, current)
    temps = sorted({float(t) for t in temps if _is_number(t) and float(t) > 0}, reverse=True)
    if not temps:
        return None
    raw = f.metrics.get("kd_raw_median")
    if not _is_number(raw):
        kd = series.get("kd_raw")
        raw = float(np.nanmedian(kd[1])) if kd is not None and np.isfinite(kd[1]).any() else None
    rows = tuple(
        (fmt.number(t), fmt.number(t * t), fmt.number(raw * t * t) if raw is not None else "-") for t in temps)
    note = (f"KD loss = raw KL x T^2; raw KL median {fmt.number(raw)}." if raw is not None
            else "KD loss = raw KL x T^2 (the run logs no raw KL).")
    logged = f.metrics.get("kd_term_median")
    if raw is not None and current is not None and _is_number(logged) and _is_number(current) and not math.isclose(
            logged, raw * current * current, rel_tol=SAME_KD_TERM):
        # The message quotes the logged median; the row for the current T is computed: say why they differ.
        note += (f" The logged KD term's median is {fmt.number(logged)}: the temperature changed during the run "
                 f"and the raw KL varies from step to step, so it differs from the row for T = {fmt.number(current)}.")
    return Table("Temperature and the KD loss it produces", ("temperature", "T^2", "KD loss"), rows, note)


def _hidden_nonfinite(run) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """The steps of the NaN/Inf each metric's log lines say were clamped, filtered or skipped."""
    steps: dict[str, set[int]] = {}
    for e in run.events_of(*HIDDEN_KINDS) if run is not None else ():
        metric = e.data.get("metric") if e.data else None
        if metric and e.step is not None:
            steps.setdefault(str(metric), set()).add(int(e.step))
    return tuple((m, tuple(sorted(s))) for m, s in sorted(steps.items()))


def _nonfinite_subject(f: Finding, series: _SeriesCache, run) -> str | None:
    """For nonfinite-onset: the metric that went NaN/Inf first (logged as such, or hidden by the log), when the run
    logs it and it is not the training loss itself (whose plot the finding shows anyway)."""
    if f.name != "nonfinite-onset" or run is None:
        return None
    first: dict[str, int] = {}
    for metric in sorted(series.metrics):
        got = series.get(metric)
        if got is not None and not np.isfinite(got[1]).all():
            first[metric] = int(got[0][np.argmax(~np.isfinite(got[1]))])
    for metric, steps in _hidden_nonfinite(run):
        if metric in series.metrics and steps:
            first[metric] = min(first.get(metric, steps[0]), steps[0])
    if not first:
        return None
    subject = min(first, key=lambda m: (first[m], m))
    return None if subject == "loss" else subject


def _nonfinite_table(f: Finding, series: _SeriesCache, facts: RunFacts, run) -> Table | None:
    """Where each metric first went NaN/Inf, and the NaN the logs hid (clamped, filtered)."""
    rows = []
    for metric in sorted(series.metrics):
        got = series.get(metric)
        if got is None:
            continue
        steps, values = got
        bad = ~np.isfinite(values)
        if bad.any():
            rows.append((metric, str(int(steps[bad.argmax()])), fmt.count(bad.sum()), "logged as NaN/Inf"))
    if run is not None:
        hidden: dict[str, list] = {}
        for e in run.events_of("nan", "nan_clamp", "skipped_step"):
            hidden.setdefault(e.kind, []).append(e)
        for kind, events in sorted(hidden.items()):
            known = [e for e in events if e.step is not None]
            first = min(known, key=lambda e: e.step) if known else events[0]
            where = f"{first.file}:{first.line}" if first.line is not None else first.file
            metric = str(first.data.get("metric", "-")) if first.data else "-"
            rows.append((metric, fmt.number(first.step), fmt.count(len(events)), f"{HIDDEN_KINDS[kind]} ({where})"))
    if not rows:
        return None
    note = ""
    if facts.last_good is not None:
        note = f"Last good checkpoint: {facts.last_good.path} (step {facts.last_good.step}). {facts.last_good_reason}"
    return Table("First non-finite values", ("metric", "first step", "count", "how"), tuple(rows), note)


def _checkpoint_table(f: Finding, series: _SeriesCache, facts: RunFacts, run) -> Table | None:
    """Every checkpoint with its NaN/Inf count and the tensors that hold them."""
    if run is None or not run.checkpoints:
        return None
    rows = []
    for c in run.checkpoints:
        where = ""
        if c.stats is not None:
            bad = [t.name for t in (*c.stats.tensors, *c.stats.optimizer_tensors) if t.nonfinite]
            where = ", ".join(bad[:4]) + (f" (+{len(bad) - 4} more)" if len(bad) > 4 else "")
        state = c.error or (fmt.count(c.stats.nonfinite) if c.stats is not None else "not inspected")
        rows.append((c.path, fmt.number(c.step), state, where or "-"))
    note = (f"Last good checkpoint: {facts.last_good.path} (step {facts.last_good.step})."
            if facts.last_good is not None else "No checkpoint is known to be good.")
    return Table("Checkpoints", ("checkpoint", "step", "NaN/Inf values", "in tensors"), tuple(rows), note)


TABLES: dict[str, Callable[[Finding, _SeriesCache, RunFacts, Any], Table | None]] = {
    "distill-temperature-blowup": _temperature_table,
    "nonfinite-onset": _nonfinite_table,
    "checkpoint-nonfinite": _checkpoint_table,
}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# --- run facts ----------------------------------------------------------------------------------------------------

def _facts(diagnosis: Diagnosis, run) -> RunFacts:
    summary = diagnosis.run
    rows = tuple(_checkpoint_row(c) for c in summary.checkpoints)
    last_good, reason = last_good_checkpoint(diagnosis)
    notes: list[str] = []
    if run is not None:
        for n in run.notes:
            where = f"{n.file}:{n.line}" if n.line is not None else n.file
            notes.append(f"{where}: {n.message}" + (f" (x{n.count})" if n.count > 1 else ""))
    return RunFacts(
        path=summary.path, name=summary.name, status=summary.status or "not recorded",
        formats=", ".join(summary.formats) or "none recognised",
        steps=fmt.steps(summary.first_step, summary.last_step) if summary.n_points else "none",
        n_points=fmt.count(summary.n_points), metrics=", ".join(summary.metrics) or "none",
        sources=tuple(run.sources) if run is not None else (),
        hparams=tuple(Row(k, fmt.truncate(fmt.number(v, fmt.PATCH_DIGITS), MAX_HPARAM_TEXT))
                      for k, v in summary.hparams.items()),
        checkpoints=rows, last_good=_checkpoint_row(last_good) if last_good else None, last_good_reason=reason,
        notes=tuple(notes[:MAX_NOTES]), notes_more=max(0, len(notes) - MAX_NOTES),
    )


def _checkpoint_row(c: Mapping[str, Any]) -> CheckpointRow:
    if c.get("error"):
        state, good = str(c["error"]), False
    elif "nonfinite" in c:
        bad = int(c["nonfinite"])
        state, good = ("finite" if not bad else f"NaN/Inf in {fmt.count(bad)} values"), not bad
    else:
        state, good = "not inspected", None
    return CheckpointRow(path=str(c.get("path", "")), step=fmt.number(c.get("step")), format=str(c.get("format", "")),
                         state=state, good=good)


def last_good_checkpoint(diagnosis: Diagnosis) -> tuple[Mapping[str, Any] | None, str]:
    """The newest readable, finite checkpoint saved before the damage began, and why that one.

    The damage begins at the earliest critical finding that starts after the run's first step: a critical finding
    from the first step is a setting of the run (a temperature, a learning rate), present in every checkpoint, so it
    cannot name a restart point. When no checkpoint predates that onset, the fallback is the newest finite one saved
    before the run went non-finite (its weights are intact even if the run was already unstable).
    """
    summary = diagnosis.run
    start = summary.first_step
    critical = sorted((f for f in diagnosis.findings if f.severity is Severity.CRITICAL and f.first_step is not None
                       and (start is None or f.first_step > start)), key=_step_key)
    finite = [c for c in summary.checkpoints
              if c.get("step") is not None and not c.get("error") and not c.get("nonfinite")]

    def newest_before(limit: int | None) -> Mapping[str, Any] | None:
        fits = [c for c in finite if limit is None or c["step"] < limit]
        return max(fits, key=lambda c: c["step"]) if fits else None

    def unchecked(c: Mapping[str, Any]) -> str:
        return "" if "nonfinite" in c else " Its weights were not inspected."

    if not critical:
        best = newest_before(None)
        return (best, "The newest finite checkpoint; no critical finding." + unchecked(best)) if best else (None, "")
    onset = critical[0]
    best = newest_before(onset.first_step)
    if best is not None:
        return best, (f"The newest finite checkpoint before step {onset.first_step}, where {onset.name} began."
                      + unchecked(best))
    went_nonfinite = [f.first_step for f in critical if f.name in NONFINITE_FINDINGS] + [
        c["step"] for c in summary.checkpoints if c.get("nonfinite") and c.get("step") is not None]
    if went_nonfinite:
        limit = min(went_nonfinite)
        best = newest_before(limit)
        if best is not None:
            return best, (f"No checkpoint predates step {onset.first_step}, where {onset.name} began; this is the "
                          f"newest with finite weights, saved before the run went non-finite at step {limit}."
                          + unchecked(best))
    return None, f"No readable, finite checkpoint was saved before step {onset.first_step}, where {onset.name} began."
