"""Chain: link findings into causes and consequences, so a report leads with root causes.

CAUSES is the one table of known mechanisms: (cause, consequence). A link is drawn when both findings are present
and the consequence did not begin before the cause (the same logged step counts as not before; a cause that holds
from the first step, such as a hyperparameter, precedes everything), and, for the few links in _CONDITIONS, when
the two findings' numbers show the mechanism at work. Findings with no cause among the warnings and criticals are the
root causes, and so are info findings that explain one of them, unless a critical finding explains it already.
A setting judged on its own (lr-too-high: the loss above chance after warmup) is not explained by another setting:
each is a knob of its own, and the more severe one leads.
"""

from __future__ import annotations

from dataclasses import replace

from analyzer.findings import Finding, Severity

# (cause, consequence), read "cause leads to consequence". Order does not matter.
CAUSES: tuple[tuple[str, str], ...] = (
    ("distill-temperature-blowup", "grad-explosion"),
    ("distill-temperature-blowup", "loss-oscillation"),
    ("distill-temperature-blowup", "nonfinite-onset"),
    ("distill-temperature-blowup", "loss-scale-collapse"),
    ("distill-temperature-blowup", "perplexity-misreport"),  # only where the T^2 term lifted the loss to the cap
    ("distill-temperature-blowup", "loss-spike"),
    ("grad-explosion", "nonfinite-onset"),
    ("grad-explosion", "loss-spike"),
    ("grad-explosion", "loss-divergence"),
    ("grad-explosion", "loss-scale-collapse"),
    ("loss-scale-collapse", "nonfinite-onset"),
    ("nonfinite-onset", "loss-oscillation"),
    ("nonfinite-onset", "checkpoint-nonfinite"),
    ("nonfinite-onset", "loss-spike"),
    ("lr-too-high", "loss-oscillation"),
    ("lr-too-high", "grad-explosion"),
    ("lr-too-high", "loss-divergence"),
    ("lr-too-high", "loss-spike"),
    ("lr-too-high", "nonfinite-onset"),
    ("lr-too-high", "loss-plateau"),
    ("lr-too-low", "loss-plateau"),
    ("lr-too-low", "grad-vanishing"),
    ("small-effective-batch", "loss-spike"),
    ("small-effective-batch", "loss-oscillation"),
    ("mlm-label-ratio", "grad-explosion"),
    ("mlm-label-ratio", "initial-loss-mismatch"),  # every token labelled changes the loss's size and meaning
    ("grad-vanishing", "loss-plateau"),
    ("init-variance", "grad-vanishing"),
    ("init-variance", "initial-loss-mismatch"),
    ("init-variance", "loss-plateau"),
    ("init-variance", "grad-explosion"),
    ("initial-loss-mismatch", "loss-plateau"),
    ("loss-spike", "loss-plateau"),
    ("loss-spike", "throughput-drop"),
    ("loss-divergence", "nonfinite-onset"),
    ("loss-spike", "loss-divergence"),  # a spike that does not come back is where a divergence starts
    ("loss-divergence", "loss-spike"),  # a jump inside a divergence already under way is part of it
    ("distill-temperature-blowup", "loss-plateau"),  # the T^2-inflated KD term drowns the LM loss, which stalls
)

# Findings that describe a setting of the run hold from its first step, whatever step they cite.
_SETTINGS = {"distill-temperature-blowup", "lr-too-low", "lr-too-high", "small-effective-batch", "mlm-label-ratio",
             "init-variance"}


def _blowup_reaches_the_cap(blowup: Finding, misreport: Finding) -> bool:
    """A perplexity cap is a bug of the reporting code; the temperature only makes it show when the cap lies above
    a fresh model's loss, which only an inflated loss reaches (seed 002: cap exp(20), fresh loss ~10). Below it,
    any untrained model hits the cap (kd-temperature-blowup-fixed: cap exp(5) under ln(256) = 5.55, no blowup)."""
    cap, fresh = misreport.metrics.get("cap_loss"), blowup.metrics.get("lm_reference")
    return isinstance(cap, (int, float)) and isinstance(fresh, (int, float)) and cap > fresh


def _batch_is_too_noisy(batch: Finding, effect: Finding) -> bool:
    """A small batch explains an instability only where small-effective-batch found evidence for a larger one (it
    suggests none when the loss is quiet and never spikes: then the batch's size is not what goes wrong)."""
    now, suggested = batch.metrics.get("effective_batch"), batch.metrics.get("suggested_effective_batch")
    return isinstance(now, (int, float)) and isinstance(suggested, (int, float)) and suggested > now


# Links that hold only under a condition on the two findings: (cause, consequence) -> test(cause, consequence).
_CONDITIONS = {
    ("distill-temperature-blowup", "perplexity-misreport"): _blowup_reaches_the_cap,
    ("small-effective-batch", "loss-spike"): _batch_is_too_noisy,
    ("small-effective-batch", "loss-oscillation"): _batch_is_too_noisy,
}


def link(findings: tuple[Finding, ...]) -> tuple[tuple[Finding, ...], tuple[str, ...]]:
    """Fill `caused_by` and return (findings ordered root causes first, root cause names)."""
    by_name = {f.name: f for f in findings}
    linked = []
    for f in findings:
        causes = tuple(sorted(
            cause for cause, effect in CAUSES
            if effect == f.name and cause in by_name and _precedes(by_name[cause], f)
            and _CONDITIONS.get((cause, effect), _always)(by_name[cause], f)
            and not _cycle(cause, f.name, by_name)
        ))
        if any(by_name[cause].severity is Severity.CRITICAL for cause in causes):
            # a critical cause accounts for its effect: a minor setting beside it is not the story (lightning_nan's
            # loss jumped to 4e27 inside a divergence; its batch looked noisy because the loss was diverging)
            causes = tuple(cause for cause in causes if by_name[cause].severity is not Severity.INFO)
        linked.append(replace(f, caused_by=causes) if causes else f)
    # An info finding is a root cause only when it explains a warning or a critical one.
    explains = {cause for f in linked if f.severity is not Severity.INFO for cause in f.caused_by}
    roots = tuple(dict.fromkeys(  # a detector that reports twice (train and eval loss) is one root cause
        f.name for f in _ordered(linked) if not f.caused_by and (f.severity is not Severity.INFO or f.name in explains)))
    ordered = _ordered([f for f in linked if f.name in roots]) + _ordered([f for f in linked if f.name not in roots])
    return tuple(ordered), roots


def _always(cause: Finding, effect: Finding) -> bool:
    return True


def _precedes(cause: Finding, effect: Finding) -> bool:
    """A cause may not start after its effect. No tolerance: both steps are logged steps of the same run, and a
    consequence logged one step before its supposed cause (bloom104b_overflow: the throughput fell at 17061, the loss
    spiked at 17062) has some other cause. Equal steps are allowed: one logged step cannot order two events in it."""
    if cause.name in _SETTINGS or cause.first_step is None or effect.first_step is None:
        return True
    return cause.first_step <= effect.first_step


def _cycle(cause: str, effect: str, by_name: dict[str, Finding]) -> bool:
    """True when the reverse link also holds and the effect began strictly earlier: then the effect is the cause."""
    if (effect, cause) not in CAUSES:
        return False
    a, b = by_name[cause], by_name[effect]
    return (b.first_step or 0) < (a.first_step or 0)


def _ordered(findings: list[Finding]) -> list[Finding]:
    return sorted(findings, key=lambda f: (-f.severity.rank, f.first_step if f.first_step is not None else -1,
                                           f.code, f.message))
