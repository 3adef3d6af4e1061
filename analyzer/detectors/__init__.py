"""The detectors: one module each, all listed in DETECTORS, the one table of codes and names.

A detector is a pure function of a Run and its parameters (see base.Detector); it does no I/O and draws nothing.
"""

from __future__ import annotations

from analyzer.detectors import (
    checkpoint_nonfinite,
    distill_temperature_blowup,
    grad_explosion,
    grad_vanishing,
    init_variance,
    initial_loss_mismatch,
    loss_divergence,
    loss_oscillation,
    loss_plateau,
    loss_scale_collapse,
    loss_spike,
    lr_too_high,
    lr_too_low,
    mlm_label_ratio,
    nonfinite_onset,
    overfitting,
    perplexity_misreport,
    small_effective_batch,
    throughput_drop,
)
from analyzer.detectors.base import Detector

DETECTORS: dict[str, Detector] = {
    "L001": loss_spike.DETECTOR,
    "L002": loss_plateau.DETECTOR,
    "L003": loss_oscillation.DETECTOR,
    "L004": loss_divergence.DETECTOR,
    "L005": initial_loss_mismatch.DETECTOR,
    "L006": overfitting.DETECTOR,
    "N001": nonfinite_onset.DETECTOR,
    "N002": loss_scale_collapse.DETECTOR,
    "N003": perplexity_misreport.DETECTOR,
    "G001": grad_explosion.DETECTOR,
    "G002": grad_vanishing.DETECTOR,
    "O001": lr_too_low.DETECTOR,
    "O002": lr_too_high.DETECTOR,
    "O003": small_effective_batch.DETECTOR,
    "D001": distill_temperature_blowup.DETECTOR,
    "M001": mlm_label_ratio.DETECTOR,
    "P001": throughput_drop.DETECTOR,
    "C001": checkpoint_nonfinite.DETECTOR,
    "C002": init_variance.DETECTOR,
}

BY_NAME: dict[str, Detector] = {d.name: d for d in DETECTORS.values()}


def lookup(key: str) -> Detector | None:
    """A detector by code (case-insensitive) or name."""
    return DETECTORS.get(key.upper()) or BY_NAME.get(key.lower())
