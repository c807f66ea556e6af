"""Precision-recall curves as images, drawn with OpenCV (no plotting library needed)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ssdcli.evaluation.voc import PrecisionRecall, precision_envelope

_WHITE, _BLACK, _GREY = (255, 255, 255), (0, 0, 0), (220, 220, 220)
_RAW, _ENVELOPE = (200, 140, 60), (40, 40, 220)  # BGR: blue raw curve, red envelope


def draw_pr_curve(curve: PrecisionRecall, title: str, size: tuple[int, int] = (560, 440)) -> np.ndarray:
    """One class's precision (y) against recall (x): the raw curve and its monotone envelope
    (the curve VOC all-point AP integrates), on a grid of 0.1 steps.

    Args:
        curve: the class's VOC precision-recall curve.
        title: drawn above the plot (class name and APs).
        size: ``(width, height)`` of the image in pixels.

    Returns:
        np.ndarray[H, W, 3] uint8 BGR.
    """
    import cv2

    width, height = size
    left, right, top, bottom = 56, 20, 44, 44
    plot_w, plot_h = width - left - right, height - top - bottom
    image = np.full((height, width, 3), 255, np.uint8)

    def to_px(recall: np.ndarray, precision: np.ndarray) -> np.ndarray:
        x = left + recall * plot_w
        y = top + (1.0 - precision) * plot_h
        return np.round(np.stack([x, y], axis=1)).astype(np.int32)  # (P, 2)

    font = cv2.FONT_HERSHEY_SIMPLEX
    for step in range(11):
        t = step / 10
        x, y = int(round(left + t * plot_w)), int(round(top + (1 - t) * plot_h))
        cv2.line(image, (x, top), (x, top + plot_h), _GREY, 1)
        cv2.line(image, (left, y), (left + plot_w, y), _GREY, 1)
        if step % 2 == 0:
            cv2.putText(image, f"{t:.1f}", (x - 10, top + plot_h + 16), font, 0.4, _BLACK, 1, cv2.LINE_AA)
            cv2.putText(image, f"{t:.1f}", (left - 30, y + 4), font, 0.4, _BLACK, 1, cv2.LINE_AA)
    cv2.rectangle(image, (left, top), (left + plot_w, top + plot_h), _BLACK, 1)
    cv2.putText(image, "recall", (left + plot_w // 2 - 20, height - 10), font, 0.45, _BLACK, 1, cv2.LINE_AA)
    cv2.putText(image, "precision", (4, top - 10), font, 0.45, _BLACK, 1, cv2.LINE_AA)
    cv2.putText(image, title, (left, 22), font, 0.5, _BLACK, 1, cv2.LINE_AA)

    if curve.recall.size and curve.num_gt > 0:
        raw = to_px(curve.recall, curve.precision)
        cv2.polylines(image, [raw.reshape(-1, 1, 2)], False, _RAW, 1, cv2.LINE_AA)  # (P, 1, 2)
        # The envelope as a step function: precision holds until recall moves on.
        envelope = precision_envelope(curve.precision)
        recall_steps = np.repeat(np.concatenate(([0.0], curve.recall)), 2)[1:-1]  # (2P,)
        precision_steps = np.repeat(envelope, 2)  # (2P,)
        steps = to_px(recall_steps, precision_steps)
        cv2.polylines(image, [steps.reshape(-1, 1, 2)], False, _ENVELOPE, 2, cv2.LINE_AA)  # (2P, 1, 2)
    else:
        message = "no ground truth" if curve.num_gt == 0 else "no detections"
        cv2.putText(image, message, (left + 20, top + plot_h // 2), font, 0.6, _BLACK, 1, cv2.LINE_AA)
    return image


def plot_file_name(class_index: int, name: str) -> str:
    """``pr_<index>_<name>.png`` with the 1-based class index, the name made file-system safe."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "class"
    return f"pr_{class_index:02d}_{safe}.png"


def write_pr_curves(directory: Path, curves: list[tuple[str, PrecisionRecall, str]]) -> list[Path]:
    """Write one PNG per class into ``directory``; ``curves`` holds ``(name, curve, title)`` in
    class-index order. Returns the files written."""
    from ssdcli.render import write_image

    directory = Path(directory)
    written = []
    for index, (name, curve, title) in enumerate(curves, start=1):
        path = directory / plot_file_name(index, name)
        write_image(path, draw_pr_curve(curve, title))
        written.append(path)
    return written
