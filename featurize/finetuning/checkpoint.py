"""The checkpoint of :func:`featurize.finetuning.finetune.finetune`: a plain dict of tensors,
strings and
numbers (``torch.load(..., weights_only=True)`` reads it, no pickled code), written atomically.

Keys: ``format`` (:data:`FORMAT`), ``backbone``, ``base_weights``, ``seed``, ``classifier``
(the name of the network's last linear layer), ``classes``, ``state_dict`` (the network with
its *original* classifier, so that it loads as a featurize backbone), ``head_weight`` and
``head_bias`` (the new classifier), ``best_epoch``, ``val_balanced_accuracy``, ``history``,
``val_paths`` and ``failures`` (``[path, reason]`` of the files left out).
"""

from __future__ import annotations

import torch

from featurize.storage.atomic import atomic_path

__all__ = ["FORMAT", "failure_list", "is_finetuned_checkpoint", "record_history",
           "save_checkpoint", "write_atomic"]

FORMAT = "featurize.finetuned"


def is_finetuned_checkpoint(payload) -> bool:
    """Whether a loaded object is a checkpoint written by
    :func:`featurize.finetuning.finetune.finetune`."""
    return isinstance(payload, dict) and payload.get("format") == FORMAT


def failure_list(paths, failures: dict, skipped=()) -> list:
    """``(path, reason)`` of the skipped files, then of the unreadable images."""
    return [(str(p), str(r)) for p, r in skipped] + [
        (paths[row], reason) for row, reason in sorted(failures.items())]


def record_history(out, history, failed: list) -> None:
    """Rewrite the best checkpoint with the whole history (it was saved mid-run)."""
    payload = torch.load(out, map_location="cpu", weights_only=True)
    payload["history"] = [dict(row) for row in history]
    payload["failures"] = [list(f) for f in failed]
    write_atomic(payload, out)


def write_atomic(payload: dict, out) -> None:
    """``torch.save`` beside ``out``, then rename: a kill never leaves a partial checkpoint."""
    with atomic_path(out) as tmp:
        torch.save(payload, tmp)


def save_checkpoint(out, model, classifier, original_head, meta, classes, val_paths, failed_files,
          history, best) -> None:
    """Write the checkpoint beside ``out`` and rename it (atomic)."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    head_weight = state.pop(f"{classifier}.weight")
    head_bias = state.pop(f"{classifier}.bias")
    for key, value in original_head.state_dict().items():  # the backbone's own shape
        state[f"{classifier}.{key}"] = value.detach().cpu().clone()
    payload = {"format": FORMAT, **meta, "classifier": classifier,
               "classes": [str(c) for c in classes], "state_dict": state,
               "head_weight": head_weight, "head_bias": head_bias,
               "best_epoch": int(best["epoch"]), "val_balanced_accuracy": float(best["score"][0]),
               "history": [dict(row) for row in history], "val_paths": list(val_paths),
               "failures": [list(f) for f in failed_files()]}
    write_atomic(payload, out)
