"""mlm-label-ratio: masked-LM labels that cover far more (or fewer) tokens than the masking ratio says.

What it detects:
    A masked language model whose share of labelled tokens (mask_ratio: tokens whose label is not -100) is far from
    its masking probability (mlm_probability, 0.15 by default): near 1.0 means every token is labelled, as with
    seed 000's `labels = input_ids.clone()`; also a config that says label_all_tokens = true.
Why it matters:
    A masked LM learns from predicting the masked tokens. Labelling every token makes most of the loss the trivial
    task of copying visible tokens: the loss is low and meaningless, the gradient is dominated by that copying (seed
    000 saw a gradient norm of ~87 against ~20 with proper masking), and conclusions drawn from the run (a "gradient
    explosion", then over-conservative hyperparameters) are wrong.
How it decides:
    The median logged mask_ratio is compared with mlm_probability (from hparams, else the default). At or above
    all_tokens it is every token labelled (critical); more than `factor` times off in either direction, and by more
    than min_gap in absolute terms, it is a warning (span masking and the 80/10/10 rule keep the ratio within about
    0.12-0.16 of a 0.15 setting). Without a logged ratio, label_all_tokens = true in the config is critical with
    medium confidence. Where the gradient norm is logged its median is reported, and compared between stretches
    with right and wrong ratios when the run has both.
What it recommends:
    label_all_tokens false (restore masking: only the selected ~15% of tokens get labels, the rest -100). A ratio
    off by a smaller factor means the data collator does not honour mlm_probability: the message says by how much,
    and no setting of the config can fix it.
Parameters:
    default_probability (default 0.15): mlm_probability when the run does not say.
    all_tokens (default 0.9): a labelled share at or above this means every token is labelled.
    factor (default 2.0): a ratio this many times above or below mlm_probability is wrong.
    min_gap (default 0.03): and it must differ from it by at least this much.
"""

from __future__ import annotations

import numpy as np

from analyzer.detectors import stats
from analyzer.detectors.base import Detector, evidence_at
from analyzer.findings import Confidence, Evidence, Recommendation, Severity, Skipped

DEFAULT_PROBABILITY = 0.15  # BERT's value and the HF DataCollatorForLanguageModeling default
ALL_TOKENS = 0.9
FACTOR = 2.0
MIN_GAP = 0.03


def check(run, params):
    label_all = run.hparam("label_all_tokens")
    prob = stats.hparam_number(run, "mlm_probability")
    intended = prob if prob and 0 < prob < 1 else params["default_probability"]
    prob_text = (f"mlm_probability {intended:g}" if prob else f"the usual mlm_probability {intended:g} (the run does "
                 "not say)")
    if not run.has("mask_ratio"):
        if label_all is True:
            hp = run.hparams["label_all_tokens"]
            return [DETECTOR.finding(
                f"The config sets label_all_tokens = true: every token gets a label instead of {prob_text}.",
                run.first_step, run.last_step, severity=Severity.CRITICAL, confidence=Confidence.MEDIUM,
                metrics={"label_all_tokens": True, "mlm_probability": intended},
                recommendations=[_restore(True, intended)],
                evidence=[Evidence(hp.file, None, f"{hp.key}: true")])]
        return Skipped(DETECTOR.name, "the run logs no mask_ratio (not a masked LM, or the labelled share is not "
                                      "logged)")
    ratio = stats.finite(run.series("mask_ratio"))
    ratio = ratio[(ratio >= 0) & (ratio <= 1)]
    if not len(ratio):
        return Skipped(DETECTOR.name, "mask_ratio has no value between 0 and 1")
    values = ratio.to_numpy()
    median = float(np.median(values))
    wrong = (values >= params["all_tokens"]) | (
        ((values > intended * params["factor"]) | (values < intended / params["factor"]))
        & (np.abs(values - intended) >= params["min_gap"]))
    all_tokens = median >= params["all_tokens"]
    off = all_tokens or ((median > intended * params["factor"] or median < intended / params["factor"])
                         and abs(median - intended) >= params["min_gap"])
    if not off:
        return []
    first = int(ratio.index[np.argmax(wrong)]) if wrong.any() else int(ratio.index[0])
    if all_tokens:
        message = (f"{median:.0%} of tokens carry a label (median mask_ratio {median:.3f}) where {prob_text} "
                   f"labels ~{intended:.0%}: every token is labelled (labels = input_ids.clone()?)")
    else:
        message = (f"The labelled share of tokens is {median:.3f} (median mask_ratio), {median / intended:.1f}x "
                   f"{prob_text}")
    grad_text, grad_metrics = _grad_context(run, ratio, wrong)
    message += grad_text + "."
    recs = []
    if all_tokens or label_all is True:
        recs.append(_restore(label_all, intended))
    return [DETECTOR.finding(
        message, first, int(ratio.index[-1]),
        severity=Severity.CRITICAL if all_tokens else Severity.WARNING,
        confidence=Confidence.HIGH,
        metrics={"mask_ratio_median": median, "mlm_probability": intended, "ratio_to_probability":
                 round(median / intended, 3), "label_all_tokens": label_all, **grad_metrics},
        recommendations=recs,
        evidence=evidence_at(run, "mask_ratio", [first, int(ratio.index[-1])]))]


def _restore(current, intended) -> Recommendation:
    return Recommendation(
        "label_all_tokens", current, False,
        f"restore masking: only the ~{intended:.0%} selected tokens get labels and the rest -100, so the loss "
        "measures prediction of hidden tokens, not copying of visible ones"
        + ("" if current is not None else "; the current setting is unknown (the run does not log it)"))


def _grad_context(run, ratio, wrong):
    """The gradient norm under the wrong labelling, and against the right one where the run has both."""
    grad = stats.grad_norm(run)
    if grad is None or grad.unmeasured or not len(grad.values):
        return "", {}
    g = grad.values
    bad_steps = set(ratio.index[wrong].tolist())
    in_bad = g[g.index.isin(bad_steps)]
    in_good = g[g.index.isin(set(ratio.index[~wrong].tolist()))]
    if len(in_bad) and len(in_good) >= 3:
        a, b = float(np.median(in_bad)), float(np.median(in_good))
        return (f"; the gradient norm is {stats.fmt_num(a)} with these labels against {stats.fmt_num(b)} where the "
                f"ratio is right ({a / b:.1f}x)", {"grad_norm_median": a, "grad_norm_median_right": b})
    median = float(np.median((in_bad if len(in_bad) else g).to_numpy()))
    clip = stats.hparam_number(run, "max_grad_norm")
    text = f"; the gradient norm has a median of {stats.fmt_num(median)}"
    if clip and clip > 0:
        text += f" ({median / clip:.1f}x the clip {stats.fmt_num(clip)})"
    return text, {"grad_norm_median": median}


DETECTOR = Detector(
    code="M001", name="mlm-label-ratio", severity=Severity.CRITICAL,
    summary="masked-LM labels cover far more or fewer tokens than the masking ratio (labels = input_ids.clone())",
    doc=__doc__,
    params={"default_probability": DEFAULT_PROBABILITY, "all_tokens": ALL_TOKENS, "factor": FACTOR,
            "min_gap": MIN_GAP},
    check=check,
)
