"""checkpoint-nonfinite: NaN or Inf inside a saved checkpoint's weights or optimizer state.

What it detects:
    A checkpoint whose model weights or optimizer state (Adam's exp_avg / exp_avg_sq, momentum buffers) hold NaN or
    Inf values, from the per-tensor statistics the checkpoint reader computes.
Why it matters:
    A checkpoint with non-finite values is unusable: resuming from it continues a dead run, and evaluating it gives
    NaN. Optimizer state goes bad first (a single Inf gradient poisons exp_avg_sq), so weights that still look finite
    are not proof of a good checkpoint. The run has to restart from an earlier, clean checkpoint.
How it decides:
    Every checkpoint that could be read is checked; the first one (by step) with any non-finite value is the first
    bad checkpoint. The tensors with the most non-finite values are named. The last good checkpoint is the latest
    one saved before it whose statistics show no non-finite value. Unreadable checkpoints (refused pickles, Git LFS
    pointers) are not findings; when none can be read the detector is skipped and says why.
What it recommends:
    Restarting from the last good checkpoint (named in the message), with the fixes that nonfinite-onset and its
    causes recommend (the chain links them); never resuming from the bad one.
Parameters:
    top_tensors (default 3): how many of the affected tensors the message names.
"""

from __future__ import annotations

from analyzer.detectors import stats
from analyzer.detectors.base import Detector
from analyzer.findings import Confidence, Evidence, Severity, Skipped

TOP_TENSORS = 3  # enough to see whether the damage is in one layer, the embeddings or everywhere


def check(run, params):
    if not run.checkpoints:
        return Skipped(DETECTOR.name, "the run has no checkpoints")
    readable = [c for c in run.checkpoints if c.stats is not None]
    if not readable:
        first_error = next((c.error for c in run.checkpoints if c.error), "no statistics were computed")
        return Skipped(DETECTOR.name, f"none of the {len(run.checkpoints)} checkpoint(s) could be read "
                                      f"({first_error})")
    bad = [c for c in readable if c.stats.nonfinite > 0]
    if not bad:
        return []
    first = min(bad, key=lambda c: (c.step is None, c.step or 0, c.path))
    tensors = sorted(
        [("", t) for t in first.stats.tensors if t.nonfinite] +
        [("optimizer ", t) for t in first.stats.optimizer_tensors if t.nonfinite],
        key=lambda kt: (-kt[1].nonfinite, kt[0], kt[1].name))
    total_bad = first.stats.nonfinite
    total = sum(t.numel for t in first.stats.tensors) + sum(t.numel for t in first.stats.optimizer_tensors)
    named = ", ".join(f"{kind}{t.name} ({t.nonfinite:,} of {t.numel:,})" for kind, t in tensors[:params["top_tensors"]])
    weights_bad = sum(t.nonfinite for t in first.stats.tensors)
    where = ("weights and optimizer state" if weights_bad and weights_bad < total_bad
             else "weights" if weights_bad else "optimizer state only")
    good = stats.last_checkpoint_before(run, first.step - 1) if first.step is not None else None
    restart = (f"last good checkpoint: {good.path} (step {good.step})" if good is not None
               else "no clean checkpoint was saved before it: restart from scratch")
    message = (f"Checkpoint {first.path}{_at(first.step)} holds {total_bad:,} non-finite values in its {where} "
               f"({len(tensors)} tensors, e.g. {named}); {restart}.")
    later_bad = [c.path for c in bad if c is not first]
    evidence = [Evidence(first.path, None, f"{kind}{t.name}: {t.nonfinite:,} non-finite of {t.numel:,}")
                for kind, t in tensors[:params["top_tensors"]]]
    if good is not None:
        evidence.append(Evidence(good.path, None, "last checkpoint with no non-finite value"))
    return [DETECTOR.finding(
        message, first.step, max((c.step for c in bad if c.step is not None), default=first.step),
        confidence=Confidence.HIGH,
        metrics={"first_bad_checkpoint": first.path, "first_bad_step": first.step, "nonfinite_values": total_bad,
                 "nonfinite_fraction": total_bad / total if total else None, "tensors_affected": len(tensors),
                 "bad_checkpoints": len(bad), "later_bad_checkpoints": later_bad[:10],
                 "last_good_checkpoint": good.path if good is not None else None,
                 "last_good_step": good.step if good is not None else None},
        evidence=evidence[:5])]


def _at(step):
    return f" (step {step})" if step is not None else ""


DETECTOR = Detector(
    code="C001", name="checkpoint-nonfinite", severity=Severity.CRITICAL,
    summary="NaN/Inf in a checkpoint's weights or optimizer state; names the last good checkpoint",
    doc=__doc__, params={"top_tensors": TOP_TENSORS}, check=check,
)
