"""OpenCV drawing: default boxes and (later) detections. Images are HxWx3 uint8 BGR arrays."""

from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np

from ssdcli.errors import UserError
from ssdcli.priors import PriorSpec, layer_box_sizes


def class_colour(class_id: int) -> tuple[int, int, int]:
    """A stable, distinct BGR colour for a class: golden-ratio hue steps, full saturation."""
    hue = (class_id * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(b * 255), int(g * 255), int(r * 255)


def draw_priors(spec: PriorSpec, panel_size: int = 360) -> np.ndarray:
    """One panel per source layer: every cell centre as a dot and the full set of default boxes
    of three locations (centre, and two corners) as outlines, scaled to the network input.

    Returns:
        np.ndarray[H, W, 3] uint8 BGR, panels laid out in rows of at most 4.
    """
    import cv2

    margin = 30
    panels = []
    for index, layer in enumerate(spec.layers):
        canvas = np.full((panel_size, panel_size, 3), 255, np.uint8)
        scale = panel_size / spec.image_size
        f = layer.feature_map
        centres = [(j + spec.offset) * layer.step * scale for j in range(f)]
        if f <= 40:
            for cy in centres:
                for cx in centres:
                    cv2.circle(canvas, (int(round(cx)), int(round(cy))), 1, (160, 160, 160), -1)
        picks = {(f // 2, f // 2), (0, 0), (f - 1, f - 1)}
        for i, j in sorted(picks):
            cx, cy = centres[j], centres[i]
            for box_index, (w, h) in enumerate(layer_box_sizes(layer)):
                colour = class_colour(box_index + 1)
                x1, y1 = int(round(cx - w * scale / 2)), int(round(cy - h * scale / 2))
                x2, y2 = int(round(cx + w * scale / 2)), int(round(cy + h * scale / 2))
                cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, 1, cv2.LINE_AA)
        title = f"layer {index}: {f}x{f}, step {layer.step:g}, {layer.boxes_per_location} boxes/loc"
        cv2.rectangle(canvas, (0, 0), (panel_size - 1, panel_size - 1), (0, 0, 0), 1)
        title_bar = np.full((margin, panel_size, 3), 255, np.uint8)
        cv2.putText(title_bar, title, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        panels.append(np.concatenate([title_bar, canvas], axis=0))
    columns = min(4, len(panels))
    rows = -(-len(panels) // columns)
    blank = np.full_like(panels[0], 255)
    panels += [blank] * (rows * columns - len(panels))
    grid_rows = [np.concatenate(panels[r * columns : (r + 1) * columns], axis=1) for r in range(rows)]
    return np.concatenate(grid_rows, axis=0)


def write_image(path: Path, image_bgr: np.ndarray) -> None:
    """Write an image with OpenCV; the format follows the file extension."""
    import cv2

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        ok = cv2.imwrite(str(path), image_bgr)
    except cv2.error as exc:
        raise UserError(f"{path}: cannot write an image there ({exc.msg.strip()}); use .png or .jpg") from exc
    if not ok:
        raise UserError(f"{path}: cannot write an image there; use a .png or .jpg name in a writable folder")
