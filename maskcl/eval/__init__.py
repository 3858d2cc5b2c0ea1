"""Evaluation: vectorised mAP/CMC (:mod:`.metrics`) and the named protocols (:mod:`.protocols`)."""

from __future__ import annotations

from maskcl.eval.metrics import Labels, pairwise_distance, rank_metrics, rule_masks, rule_metrics, rule_metrics_from_features
from maskcl.eval.protocols import PROTOCOLS, evaluate_features

__all__ = [
    "PROTOCOLS",
    "Labels",
    "evaluate_features",
    "pairwise_distance",
    "rank_metrics",
    "rule_masks",
    "rule_metrics",
    "rule_metrics_from_features",
]
