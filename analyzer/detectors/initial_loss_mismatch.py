"""Initial loss mismatch: the first losses are far from chance level, ln(vocab_size) or ln(num_classes).

What it detects:
    A freshly initialised classifier or language model predicts close to the uniform distribution, so its first loss
    is close to ln(number of classes): ln(65536) = 11.1 for seed 004's vocabulary. This detector compares the first
    logged losses with that value. Far ABOVE it: the initial logits are too large (an init std too big for the
    width, summed embeddings that add their variances, an unscaled output layer). Far BELOW it at the very start of
    a from-scratch run: the model sees the answer (labels leak into the inputs) or the loss is not the cross-entropy
    it claims to be.
Why it matters:
    An initial loss above chance means the network starts confidently wrong: the first hundreds of steps are spent
    shrinking logits instead of learning, gradients are large and training often stalls or spikes. An initial loss
    below chance before any training is a bug that makes every later number meaningless.
How it decides:
    Chance level is ln(num_classes) or ln(vocab_size) from the hparams (base 2 where the log reports base-2 loss);
    without them the detector is skipped. The initial loss is the median of the logged points in the first
    `initial_steps` steps (at most 5 points); if the log's first point comes later than that, the start is not
    visible and the detector is skipped. The first logged point must be off by the same margin as that median:
    a loss that starts at chance and climbs within those steps was moved by the updates (too high an lr), not by
    the init. Above: initial loss more than `above` (relative) over chance; the excess
    also gives the implied standard deviation of the initial logits, s = sqrt(2 x excess) (for Gaussian logits the
    expected cross-entropy is about ln V + s^2 / 2). Below: more than `below` under chance, judged only when the run
    is known to train from scratch (the reference trainer, or an `init_std` with no pretrained model path in the
    config), because a fine-tuned model rightly starts below chance.
What it recommends:
    Above: scale `init_std` down so the implied logit std falls to about 0.5 (factor 0.5 / s, never more than x0.7),
    and, where the model sums K factorized embeddings without scaling, `scale_factorized_init` = true (std /
    sqrt(K), seed 004); the init-variance detector checks the weights themselves. Below: no setting can fix it; the
    message says to check labels and loss.
Parameters:
    above (default 0.1): relative excess over chance that counts as far above (0.1 = +10%).
    below (default 0.25): relative shortfall under chance that counts as far below (0.25 = -25%).
    initial_steps (default 20): the first steps whose losses count as "initial".
"""

from __future__ import annotations

import math

import numpy as np

from analyzer.detectors import stats
from analyzer.detectors.base import Detector, evidence_at
from analyzer.findings import Confidence, Recommendation, Severity, Skipped

ABOVE = 0.1  # +10%: a sensible init sits within a few % of ln V (logit std <= ~0.5 adds <= 0.125 nats)
BELOW = 0.25
INITIAL_STEPS = 20
INITIAL_POINTS = 5
TARGET_LOGIT_STD = 0.5
MAX_INIT_FACTOR = 0.7
NORMALISATION_MATCH = 0.15  # relative agreement between the loss excess and labelled/masked token ratio
PRETRAINED_KEYS = ("_name_or_path", "model_name_or_path", "pretrained_model_name_or_path", "init_from",
                   "resume_from_checkpoint", "base_model")
FROM_SCRATCH_FORMATS = ("postmortem-run", "canonical")  # the reference trainer always initialises from scratch


def check(run, params):
    chance = stats.chance_level(run)
    if chance is None:
        return Skipped(DETECTOR.name, "the run's config gives neither vocab_size nor num_classes")
    found = stats.cross_entropy_loss(run)
    if found is None:
        return Skipped(DETECTOR.name, "the run logs no finite cross-entropy training loss (a distillation run's "
                                      "total loss is not one; its lm_loss is)")
    metric, loss = found
    first_step = int(loss.index[0])
    if first_step > params["initial_steps"]:
        return Skipped(DETECTOR.name, f"the loss log starts at step {first_step}, after the first "
                                      f"{params['initial_steps']} steps: the initial loss is not visible")
    early = loss[loss.index <= first_step + params["initial_steps"]].head(INITIAL_POINTS)
    initial = float(np.median(early.to_numpy()))
    ratio = initial / chance.value
    # the very first point must agree: a median over points the updates already moved (a loss that climbs from
    # chance under too high an lr) says nothing about the init (hf_lr_too_high: 4.72 at step 5, median 5.41)
    first_ratio = float(early.iloc[0]) / chance.value
    metrics = {"initial_loss": initial, "chance_level": chance.value, "classes": chance.classes,
               "ratio": ratio, "points": len(early)}
    evidence = evidence_at(run, metric, list(early.index[:3]))
    if ratio > 1 + params["above"] and first_ratio > 1 + params["above"]:
        mismatch = _normalisation_mismatch(run, ratio)
        if mismatch is not None:
            labelled, expected = mismatch
            metrics.update(mask_ratio=labelled, mlm_probability=expected)
            message = (f"the first {metric} values (median {stats.fmt_num(initial)}) are {stats.fmt_ratio(ratio)} "
                       f"chance level "
                       f"{chance.describe()}, close to the {labelled / expected:.1f}x between the labelled share of "
                       f"tokens ({labelled:.0%}) and the masking probability ({expected:.0%}): the loss sums over "
                       "more labelled tokens than it divides by.")
            recs = []
            if run.hparam("label_all_tokens") in (True, 1, "true", "True"):
                recs.append(Recommendation(
                    "label_all_tokens", True, False,
                    f"{labelled:.0%} of tokens carry a label instead of ~{expected:.0%}: label only the masked "
                    "tokens (-100 elsewhere), as the masked-LM objective intends"))
            return [DETECTOR.finding(message, first_step, int(early.index[-1]), confidence=Confidence.HIGH,
                                     metrics=metrics, recommendations=recs, evidence=evidence)]
        excess_nats = (initial - chance.value) * math.log(chance.base)
        logit_std = math.sqrt(2 * excess_nats)
        metrics.update(excess=initial - chance.value, implied_logit_std=logit_std)
        message = (f"the first {metric} values (median {stats.fmt_num(initial)}) are {stats.fmt_ratio(ratio)} "
                       f"chance level "
                   f"{chance.describe()}: the initial logits are too large (implied std ~{logit_std:.1f}), the "
                   f"init scale is off.")
        return [DETECTOR.finding(message, first_step, int(early.index[-1]), confidence=Confidence.HIGH,
                                 metrics=metrics, recommendations=_init_recs(run, logit_std), evidence=evidence)]
    if ratio < 1 - params["below"] and first_ratio < 1 - params["below"] and _from_scratch(run):
        message = (f"the first {metric} values (median {stats.fmt_num(initial)}) are only {ratio:.0%} of chance "
                   f"level {chance.describe()} in a run trained from scratch: before any learning the model "
                   "cannot beat chance, so labels leak into the inputs or the loss is not the full cross-entropy.")
        return [DETECTOR.finding(message, first_step, int(early.index[-1]), confidence=Confidence.MEDIUM,
                                 metrics=metrics, evidence=evidence)]
    return []


def _normalisation_mismatch(run, ratio: float) -> tuple[float, float] | None:
    """(labelled share, masking probability) when the initial excess matches their ratio (within 15%): a masked
    LM whose loss sums over every labelled token but divides by the expected number of masked ones."""
    expected = stats.hparam_number(run, "mlm_probability")
    if not expected or not run.has("mask_ratio"):
        return None
    labelled = stats.finite(run.series("mask_ratio"))
    if not len(labelled):
        return None
    share = float(np.median(labelled.head(INITIAL_POINTS).to_numpy()))
    if share <= expected or abs(ratio / (share / expected) - 1) > NORMALISATION_MATCH:
        return None
    return share, expected


def _init_recs(run, logit_std: float) -> list[Recommendation]:
    recs = []
    factor = min(MAX_INIT_FACTOR, TARGET_LOGIT_STD / logit_std)
    std = stats.hparam_number(run, "init_std")
    if std:
        recs.append(Recommendation(
            "init_std", std, stats.round_sig(std * factor, 2),
            f"the initial loss implies logits with std ~{logit_std:.1f}; scaling the init by x{factor:.2f} brings "
            f"them to ~{TARGET_LOGIT_STD}, where the first loss sits near chance"))
    k = stats.hparam_number(run, "n_factorized_embeddings")
    scaled = run.hparam("scale_factorized_init")
    if k and k > 1 and scaled in (False, 0, "false", "False"):
        recs.append(Recommendation(
            "scale_factorized_init", scaled, True,
            f"the input embedding sums {int(k)} tables, which multiplies its variance by {int(k)}; initialising "
            f"each with std / sqrt({int(k)}) keeps the sum at the intended std"))
    return recs


def _from_scratch(run) -> bool:
    if any(run.hparam(key) for key in PRETRAINED_KEYS):
        return False
    return any(fmt in FROM_SCRATCH_FORMATS for fmt in run.formats) or (
        run.hparam("init_std") is not None and "hf-trainer" not in run.formats)


DETECTOR = Detector(
    code="L005", name="initial-loss-mismatch", severity=Severity.WARNING,
    summary="the first losses are far from chance level ln(vocab_size) or ln(num_classes)",
    doc=__doc__,
    params={"above": ABOVE, "below": BELOW, "initial_steps": INITIAL_STEPS},
    check=check, requires=("loss", "lm_loss"),
)
