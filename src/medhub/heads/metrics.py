"""How good a head is: discrimination (AUC), balanced accuracy and calibration, from class probabilities.

One function serves cross-validation at training time (out-of-fold probabilities) and
``medhub heads evaluate`` on new labelled data, so both report the same numbers the same way:

* **AUC**: binary ROC AUC of the second class (classes sorted as the head stores them);
  for more than two classes the macro average of one-vs-rest AUCs (``auc_kind`` says which).
  Undefined (None) when the labels hold a single class.
* **Balanced accuracy**: mean per-class recall of the most probable class, so a majority class
  cannot hide a useless head (few-shot label sets are rarely balanced).
* **Brier score**: mean over cases of the squared distance between the probability vector and
  the one-hot truth, halved so that the binary case equals the usual binary Brier score
  (0 = perfect, 0.25 = always 0.5/0.5).
* **Reliability bins**: for two classes the predicted probability of the second class against
  the observed frequency of that class; for more, the top-class confidence against how often
  the top class is right. Equal-width bins; empty ones are left out. ``ece`` is the
  case-weighted mean gap between confidence and frequency.
"""

from __future__ import annotations

from typing import Any

import numpy as np

DEFAULT_BINS = 5


def classification_metrics(
    y_true: list[str] | np.ndarray,
    probabilities: np.ndarray,
    classes: list[str],
    *,
    bins: int = DEFAULT_BINS,
) -> dict[str, Any]:
    """Metrics of ``probabilities`` (cases x classes, columns in ``classes`` order) against ``y_true``."""
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    y = np.asarray([str(v) for v in y_true])
    probs = np.asarray(probabilities, dtype=float)
    if probs.shape != (len(y), len(classes)):
        raise ValueError(f"probabilities of shape {probs.shape} for {len(y)} cases and {len(classes)} classes")
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(y) - set(index))
    if unknown:
        raise ValueError(f"labels {unknown} are not classes of the head ({', '.join(classes)})")
    truth = np.array([index[v] for v in y])
    onehot = np.eye(len(classes))[truth]
    predicted = probs.argmax(axis=1)
    present = sorted(set(truth.tolist()))

    auc: float | None = None
    auc_kind = "binary" if len(classes) == 2 else "one-vs-rest macro"
    if len(present) >= 2:
        if len(classes) == 2:
            auc = float(roc_auc_score(truth == 1, probs[:, 1]))
        elif len(present) == len(classes):
            auc = float(roc_auc_score(truth, probs, multi_class="ovr", average="macro",
                                      labels=list(range(len(classes)))))
        else:  # some classes absent from these labels: average the one-vs-rest AUCs of those present
            auc = float(np.mean([roc_auc_score(truth == k, probs[:, k]) for k in present]))

    if len(classes) == 2:
        confidence, hit, reliability_of = probs[:, 1], (truth == 1).astype(float), f"probability of '{classes[1]}'"
    else:
        confidence, hit, reliability_of = probs.max(axis=1), (predicted == truth).astype(float), "top-class confidence"
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    reliability = []
    ece = 0.0
    for b in range(bins):
        members = which == b
        n = int(members.sum())
        if n == 0:
            continue
        mean_p, freq = float(confidence[members].mean()), float(hit[members].mean())
        ece += n / len(y) * abs(mean_p - freq)
        reliability.append({"bin": [round(float(edges[b]), 3), round(float(edges[b + 1]), 3)], "cases": n,
                            "mean_probability": round(mean_p, 4), "observed_frequency": round(freq, 4)})
    return {
        "cases": int(len(y)),
        "class_counts": {c: int((truth == i).sum()) for i, c in enumerate(classes)},
        "auc": None if auc is None else round(auc, 4),
        "auc_kind": auc_kind,
        "balanced_accuracy": round(float(balanced_accuracy_score(truth, predicted)), 4),
        "accuracy": round(float((predicted == truth).mean()), 4),
        "brier": round(float(((probs - onehot) ** 2).sum(axis=1).mean() / 2), 4),
        "calibration": {"reliability_of": reliability_of, "ece": round(ece, 4), "bins": reliability},
    }


def format_metrics(metrics: dict[str, Any]) -> list[str]:
    """Human-readable lines for the terminal (the JSON holds the same numbers)."""
    auc = "n/a (one class)" if metrics["auc"] is None else f"{metrics['auc']:.3f} ({metrics['auc_kind']})"
    counts = ", ".join(f"{c}: {n}" for c, n in metrics["class_counts"].items())
    lines = [
        f"cases: {metrics['cases']} ({counts})",
        f"AUC: {auc}",
        f"balanced accuracy: {metrics['balanced_accuracy']:.3f} (accuracy {metrics['accuracy']:.3f})",
        f"Brier score: {metrics['brier']:.4f}; expected calibration error: {metrics['calibration']['ece']:.4f}",
        f"reliability ({metrics['calibration']['reliability_of']}):",
    ]
    for row in metrics["calibration"]["bins"]:
        lo, hi = row["bin"]
        lines.append(f"  {lo:.1f}-{hi:.1f}: {row['cases']:3d} cases, mean p {row['mean_probability']:.3f}, "
                     f"observed {row['observed_frequency']:.3f}")
    return lines
