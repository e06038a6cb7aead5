"""Classification metrics from predicted and true label ids."""

from __future__ import annotations

import torch


def confusion_matrix(predictions: torch.Tensor, targets: torch.Tensor, num_labels: int) -> torch.Tensor:
    """counts[true, predicted]."""
    flat = targets.long() * num_labels + predictions.long()
    return torch.bincount(flat, minlength=num_labels * num_labels).reshape(num_labels, num_labels)


def classification_metrics(predictions: torch.Tensor, targets: torch.Tensor, num_labels: int) -> dict:
    """accuracy, precision, recall, f1 and the confusion matrix (rows: true label, columns: predicted).

    With two labels precision/recall/F1 are those of label id 1 (the positive class, as for
    SST-2); with more they are macro averages. Macro F1 and per-label figures are always included.
    A ratio with an empty denominator counts as 0. Macro averages run over the labels that occur
    among the targets or the predictions (as scikit-learn's): a label absent from both, with no
    support and never predicted, has no F1 to average."""
    counts = confusion_matrix(predictions, targets, num_labels).double()
    true_positive = counts.diagonal()
    predicted = counts.sum(dim=0)
    actual = counts.sum(dim=1)
    precision = _ratio(true_positive, predicted)
    recall = _ratio(true_positive, actual)
    f1 = _ratio(2 * precision * recall, precision + recall)
    total = counts.sum()
    binary = num_labels == 2
    present = (actual > 0) | (predicted > 0)

    def macro(values: torch.Tensor) -> float:
        return values[present].mean().item() if present.any() else 0.0

    return {
        "accuracy": (true_positive.sum() / total).item() if total > 0 else 0.0,
        "precision": precision[1].item() if binary else macro(precision),
        "recall": recall[1].item() if binary else macro(recall),
        "f1": f1[1].item() if binary else macro(f1),
        "f1_macro": macro(f1),
        "per_label": {"precision": precision.tolist(), "recall": recall.tolist(), "f1": f1.tolist(), "support": actual.long().tolist()},
        "confusion_matrix": counts.long().tolist(),
        "examples": int(total.item()),
    }


def _ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    return torch.where(denominator > 0, numerator / denominator.clamp_min(1e-12), torch.zeros_like(numerator))
