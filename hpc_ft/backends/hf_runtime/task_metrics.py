"""The metrics of each task from logits: accuracy, macro-F1 and log loss (scikit-learn); entity-level P/R/F1 overall and per type (seqeval)."""

from __future__ import annotations

import numpy as np

IGNORE_INDEX = -100


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def sequence_metrics(logits: np.ndarray, labels: np.ndarray, n_classes: int) -> dict:
    """accuracy, macro-F1 and log loss (natural log) of one label per row."""
    from sklearn.metrics import accuracy_score, f1_score, log_loss

    probs = softmax(np.asarray(logits, dtype=np.float64))
    preds = probs.argmax(-1)
    classes = list(range(n_classes))
    return {
        "accuracy": float(accuracy_score(labels, preds)),
        "f1": float(f1_score(labels, preds, labels=classes, average="macro", zero_division=0)),
        "log_loss": float(log_loss(labels, probs, labels=classes)),
    }


def word_tags(logits: np.ndarray, labels: np.ndarray, names: list[str]) -> tuple[list[list[str]], list[list[str]]]:
    """(predicted, gold) tag sequences over the positions that carry a label (each word's first subword)."""
    preds = np.asarray(logits).argmax(-1)
    pred_seqs, gold_seqs = [], []
    for p_row, l_row in zip(preds, np.asarray(labels)):
        keep = l_row != IGNORE_INDEX
        pred_seqs.append([names[i] for i in p_row[keep]])
        gold_seqs.append([names[i] for i in l_row[keep]])
    return pred_seqs, gold_seqs


def entity_metrics(pred: list[list[str]], gold: list[list[str]]) -> dict:
    """seqeval's entity-level precision/recall/F1 (exact span and type), per type too; token accuracy."""
    from seqeval.metrics import accuracy_score, classification_report, f1_score, precision_score, recall_score

    out = {
        "precision": float(precision_score(gold, pred, zero_division=0)),
        "recall": float(recall_score(gold, pred, zero_division=0)),
        "f1": float(f1_score(gold, pred, zero_division=0)),
        "accuracy": float(accuracy_score(gold, pred)),
    }
    report = classification_report(gold, pred, output_dict=True, zero_division=0)
    for kind, row in report.items():
        if kind.endswith(" avg"):
            continue
        out[f"{kind}_f1"] = float(row["f1-score"])
        out[f"{kind}_precision"] = float(row["precision"])
        out[f"{kind}_recall"] = float(row["recall"])
    return out


def compute_metrics_for(task: str, names: list[str]):
    """A Trainer `compute_metrics` for the task (its keys become eval_<name>, events val_<name>)."""

    def compute(eval_pred):
        logits, labels = eval_pred.predictions, eval_pred.label_ids
        if isinstance(logits, tuple):
            logits = logits[0]
        if task == "token_classification":
            pred, gold = word_tags(logits, labels, names)
            return entity_metrics(pred, gold)
        return sequence_metrics(logits, labels, len(names))

    return compute
