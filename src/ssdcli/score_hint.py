"""The hint ``ssd detect`` gives when nothing scores above ``--min-score``: the best score seen and a
threshold that would show it.

A weak model (a short run, a new dataset) often scores its true objects just under the default 0.3;
without a hint the user sees empty pictures and no reason. Detectors record the highest class
probability per class before the threshold (:func:`best_class_scores`, folded into
:class:`ssdcli.inference.Timings`), which costs one softmax per batch, and the run turns it into
one line (:func:`no_detection_message`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# Suggested thresholds are the largest multiple of the first of these steps that is below the best
# score (0.268 -> 0.25), falling back to finer steps for very low scores (0.043 -> 0.04).
_STEPS = (0.05, 0.01, 0.001)


def best_class_scores(cls_logits: Tensor) -> Tensor:
    """Tensor[C]: the highest softmax probability of each foreground class over a batch's default
    boxes, from ``cls_logits`` Tensor[B, P, C + 1] (background at index 0)."""
    return torch.softmax(cls_logits.float(), dim=-1)[..., 1:].amax(dim=(0, 1))  # (C,)


def suggested_min_score(best: float, floor: float = 0.0) -> float:
    """A round ``--min-score`` strictly below ``best`` (detections keep scores *above* the
    threshold), and not below ``floor`` (the lowest threshold the detector accepts).

    ``suggested_min_score(0.268) == 0.25``; ``(0.25) == 0.2``; ``(0.043) == 0.04``; ``(0.0004) == 0``.
    """
    for step in _STEPS:
        value = (math.ceil(round(best / step, 9)) - 1) * step  # the largest multiple of step < best
        if value > 0:
            return max(round(value, 3), floor)
    return floor


def no_detection_message(
    threshold: float,
    best_scores: Tensor | None,
    hidden_below: float,
    images: int,
    frames: int = 0,
    labels: Tensor | None = None,
) -> str:
    """The one line for a run with no detection above ``threshold``.

    Args:
        threshold: the run's ``--min-score``.
        best_scores: Tensor[C] per class, NaN where unseen (:class:`ssdcli.inference.Timings`);
            ``None`` when the detector did not report them.
        hidden_below: scores at or below this were invisible to the detector (0: none were).
        images, frames: image files and video frames searched.
        labels: Tensor[L] of 1-based labels the run kept (``--classes``); ``None``: every class.
    """
    counts = [f"{n} {what}{'s' if n != 1 else ''}" for n, what in ((images, "image"), (frames, "video frame")) if n]
    head = f"no detection scored above {threshold:g} on {' and '.join(counts) or 'no image'}"
    best = math.nan
    if best_scores is not None and best_scores.numel():
        chosen = best_scores if labels is None else best_scores[labels - 1]
        best = float(torch.nan_to_num(chosen, nan=-1.0).max()) if chosen.numel() else math.nan
        best = math.nan if best < 0 else best
    if not math.isnan(best) and best <= threshold:
        return f"{head}; the best score was {best:.3f}: try --min-score {suggested_min_score(best, hidden_below):g}"
    if hidden_below > 0 and best_scores is not None:
        if hidden_below < threshold:
            return f"{head}, nor above {hidden_below:g}, the lowest score this exported model returns"
        return f"{head}; this exported model returns no score at or below {hidden_below:g} (a re-export with a lower --min-score shows more)"
    return f"{head}; try a lower --min-score"
