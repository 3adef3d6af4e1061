"""init-variance: weights at initialization (or a sum of embeddings) whose variance is far from the intended one.

What it detects:
    An input embedding built as the sum of K factorized embedding tables, each initialised with the full init_std,
    so the sum starts with K times the intended variance (seed 004: 3 tables, 3x the variance; the fix scales each
    table's std by 1/sqrt(3)); and, in a checkpoint saved at step 0, weight matrices whose std is far above the
    intended init_std.
Why it matters:
    The scale of the initial weights sets the scale of the first activations and logits: too large a variance
    gives a first loss above ln(vocab_size), saturated softmaxes and large early gradients, and a run that spends
    its first thousands of steps undoing its initialization, or never recovers with a small batch and a high lr.
How it decides:
    From the config: n_factorized_embeddings = K > 1 with scale_factorized_init false means the summed embedding
    starts with K x init_std^2 (medium confidence). From the earliest checkpoint: tables whose names differ only by
    a number, contain "emb", and share a shape form a factorized group; the variance of their sum is the sum of
    their variances (independent at init), compared with init_std^2 (or, without init_std, with the variance of
    another embedding such as the position table); at least `var_factor` times larger is a finding (high
    confidence when the checkpoint is from step 0, where nothing has moved yet). In a step-0 checkpoint, 2-D weights
    whose std is more than `std_factor` x init_std are reported as info. The first loss and ln(vocab_size) are
    quoted where known (initial-loss-mismatch judges them).
What it recommends:
    scale_factorized_init true where the run has that switch, else init_std / sqrt(K) for the factorized tables,
    with the numbers (seed 004: 0.02 -> 0.0115, so the summed embedding starts at std 0.02 instead of 0.035).
Parameters:
    var_factor (default 2.0): a summed variance at least this many times the intended one is a finding.
    std_factor (default 2.0): a step-0 weight std above this many times init_std is reported.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict

import numpy as np

from analyzer.detectors import stats
from analyzer.detectors.base import Detector
from analyzer.findings import Confidence, Evidence, Recommendation, Severity, Skipped

VAR_FACTOR = 2.0  # K = 2 tables already double the variance; anything below is within init noise and scaling
STD_FACTOR = 2.0
EMBEDDING = re.compile(r"emb|wte|tok", re.I)
DIGITS = re.compile(r"\d+")


def check(run, params):
    k_hp = stats.hparam_number(run, "n_factorized_embeddings")
    k_hp = int(k_hp) if k_hp and k_hp > 1 else None
    scaled = run.hparam("scale_factorized_init")
    init_std = stats.hparam_number(run, "init_std")
    ckpt = _earliest(run)
    group = _factorized_group(ckpt) if ckpt is not None else None
    if ckpt is None and k_hp is None:
        return Skipped(DETECTOR.name, "no readable checkpoint and no factorized-embedding settings in the config")

    findings = []
    if group is not None:
        finding = _from_checkpoint(run, ckpt, group, init_std, scaled, params)
        if finding is not None:
            findings.append(finding)
    elif k_hp is not None and scaled is False:
        findings.append(_from_config(run, k_hp, init_std))
    if ckpt is not None and ckpt.step == 0 and init_std and not findings:
        finding = _wide_weights(run, ckpt, init_std, params)
        if finding is not None:
            findings.append(finding)
    return findings


def _earliest(run):
    readable = [c for c in run.checkpoints if c.stats is not None and c.stats.tensors and c.step is not None]
    return min(readable, key=lambda c: (c.step, c.path)) if readable else None


def _factorized_group(ckpt):
    """The tensors of the largest group of same-shape 2-D embedding tables whose names differ only by a number."""
    groups = defaultdict(list)
    for t in ckpt.stats.tensors:
        if len(t.shape) == 2 and EMBEDDING.search(t.name) and DIGITS.search(t.name):
            groups[(DIGITS.sub("#", t.name), tuple(t.shape))].append(t)
    groups = [g for g in groups.values() if len(g) >= 2]
    if not groups:
        return None
    return max(groups, key=lambda g: (len(g), g[0].name))


def _from_checkpoint(run, ckpt, group, init_std, scaled, params):
    k = len(group)
    summed_var = float(sum(t.std ** 2 for t in group))
    reference, ref_text = _reference_std(ckpt, group, init_std)
    if not reference:
        return None
    ratio = summed_var / reference ** 2
    if ratio < params["var_factor"]:
        return None
    table_std = float(np.median([t.std for t in group]))
    at_init = ckpt.step == 0
    intended = init_std or reference
    message = (f"The input embedding is the sum of {k} tables ({_names(group)}) each with std ~"
               f"{stats.fmt_num(table_std)} in {ckpt.path} (step {ckpt.step}): the sum has std "
               f"{stats.fmt_num(math.sqrt(summed_var))}, {ratio:.1f}x the variance of {ref_text}")
    message += _initial_loss(run) + "."
    evidence = [Evidence(ckpt.path, None, f"{t.name}: std {t.std:.4g}, shape {tuple(t.shape)}") for t in group[:3]]
    return DETECTOR.finding(
        message, ckpt.step, ckpt.step, severity=Severity.WARNING,
        confidence=Confidence.HIGH if at_init else Confidence.MEDIUM,
        metrics={"tables": k, "table_std": table_std, "summed_std": math.sqrt(summed_var),
                 "intended_std": intended, "variance_ratio": round(ratio, 3), "checkpoint": ckpt.path,
                 "checkpoint_step": ckpt.step, **_loss_metrics(run)},
        recommendations=[_recommend(run, k, intended, scaled, math.sqrt(summed_var / k))],
        evidence=(evidence + _config_evidence(run))[:5])


def _from_config(run, k, init_std):
    std = init_std or 0.02
    message = (f"The config sums n_factorized_embeddings = {k} embedding tables with scale_factorized_init false: "
               f"each starts at std {stats.fmt_num(std)}{'' if init_std else ' (init_std not found: 0.02 assumed)'}, "
               f"so their sum starts at std {stats.fmt_num(std * math.sqrt(k))}, {k}x the intended variance")
    message += _initial_loss(run) + "."
    return DETECTOR.finding(
        message, run.first_step, run.first_step, severity=Severity.WARNING, confidence=Confidence.MEDIUM,
        metrics={"tables": k, "table_std": std, "summed_std": std * math.sqrt(k), "intended_std": std,
                 "variance_ratio": float(k), **_loss_metrics(run)},
        recommendations=[_recommend(run, k, std, run.hparam("scale_factorized_init"), std)],
        evidence=_config_evidence(run))


def _wide_weights(run, ckpt, init_std, params):
    wide = [t for t in ckpt.stats.tensors if len(t.shape) == 2 and t.std > params["std_factor"] * init_std]
    if not wide:
        return None
    wide.sort(key=lambda t: (-t.std, t.name))
    return DETECTOR.finding(
        f"{len(wide)} weight matrices in the step-0 checkpoint {ckpt.path} start with a std above "
        f"{params['std_factor']:g}x init_std {stats.fmt_num(init_std)} (e.g. {wide[0].name}: "
        f"{stats.fmt_num(wide[0].std)}): the model does not initialise them with init_std.",
        0, 0, severity=Severity.INFO, confidence=Confidence.HIGH,
        metrics={"wide_tensors": len(wide), "largest_std": wide[0].std, "init_std": init_std},
        evidence=[Evidence(ckpt.path, None, f"{t.name}: std {t.std:.4g}") for t in wide[:3]])


def _reference_std(ckpt, group, init_std):
    """The std one table's sum should have: init_std, else another embedding's std (e.g. positions)."""
    if init_std:
        return init_std, f"init_std {stats.fmt_num(init_std)}"
    names = {t.name for t in group}
    others = [t for t in ckpt.stats.tensors if len(t.shape) == 2 and EMBEDDING.search(t.name) and t.name not in names]
    if others:
        ref = float(np.median([t.std for t in others]))
        return ref, f"the other embedding ({others[0].name}, std {stats.fmt_num(ref)})"
    return None, ""


def _recommend(run, k, intended, scaled, table_std):
    target = stats.round_sig(intended / math.sqrt(k), 3)
    numbers = (f"each of the {k} tables starts at std {stats.fmt_num(intended)}/sqrt({k}) = {stats.fmt_num(target)}, "
               f"so their sum has std {stats.fmt_num(intended)} instead of {stats.fmt_num(table_std * math.sqrt(k))} "
               f"(variance {k}x too large before)")
    if "scale_factorized_init" in run.hparams:
        return Recommendation("scale_factorized_init", scaled, True, numbers)
    return Recommendation("init_std", intended, target, numbers + "; apply it to the factorized tables only")


def _names(group) -> str:
    names = [t.name for t in group]
    return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")


def _initial_loss(run) -> str:
    m = _loss_metrics(run)
    if "initial_loss" in m and "ln_vocab" in m:
        return f"; the first loss is {m['initial_loss']:.3g} against ln(vocab) = {m['ln_vocab']:.3g}"
    return ""


def _loss_metrics(run) -> dict:
    out = {}
    loss = stats.train_loss(run)
    if loss is not None:
        out["initial_loss"] = float(loss[1].iloc[0])
    vocab = stats.hparam_number(run, "vocab_size")
    if vocab and vocab > 1:
        out["ln_vocab"] = math.log(vocab)
    return out


def _config_evidence(run) -> list[Evidence]:
    out = []
    for name in ("n_factorized_embeddings", "scale_factorized_init", "init_std"):
        hp = run.hparams.get(name)
        if hp is not None:
            out.append(Evidence(hp.file, None, f"{hp.key}: {hp.value}"))
    return out


DETECTOR = Detector(
    code="C002", name="init-variance", severity=Severity.WARNING,
    summary="initial weights (or summed factorized embeddings) with variance far from the intended init_std",
    doc=__doc__, params={"var_factor": VAR_FACTOR, "std_factor": STD_FACTOR}, check=check,
)
