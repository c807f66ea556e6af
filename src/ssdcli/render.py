"""Drawing: detections and ground truth on images (OpenCV), the default-box picture (matplotlib),
image and video writing, the ``--show`` window. Images are HxWx3 uint8 BGR arrays."""

from __future__ import annotations

import colorsys
import os
import sys
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

from ssdcli.errors import UserError
from ssdcli.priors import PriorSpec, layer_box_sizes


def class_colour(class_id: int) -> tuple[int, int, int]:
    """A stable, distinct BGR colour for a class: golden-ratio hue steps, full saturation."""
    hue = (class_id * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(b * 255), int(g * 255), int(r * 255)


def _box_names(layer) -> list[str]:
    """Legend names of the default boxes at one location, in output order (Caffe's)."""
    names = ["min square", "sqrt(min*max) square"]
    for ar in layer.aspect_ratios:
        names += [f"ar {ar:g}", f"ar 1/{ar:g}"]
    return names


def draw_priors(spec: PriorSpec, panel_size: int = 360) -> np.ndarray:
    """One panel per source layer, drawn with matplotlib (:mod:`ssdcli.plotting`): every cell
    centre as a dot (up to 40x40 cells) and the full set of default boxes of three locations
    (centre and two corners) as outlines, in network-input pixels, one colour per box shape.

    Returns:
        np.ndarray[H, W, 3] uint8 BGR, panels in rows of at most 4, each about ``panel_size``
        pixels wide.
    """
    from ssdcli.plotting import new_figure, styled, to_bgr

    @styled
    def figure():
        columns = min(4, len(spec.layers))
        rows = -(-len(spec.layers) // columns)
        side = panel_size / 100
        fig = new_figure(side * columns, (side + 0.35) * rows)
        axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False).ravel())
        for index, (ax, layer) in enumerate(zip(axes, spec.layers)):
            _priors_panel(ax, spec, layer, index)
        for ax in axes[len(spec.layers):]:
            ax.set_axis_off()
        fig.suptitle(f"default boxes of {spec.name}: {spec.image_size}x{spec.image_size} input", fontweight="bold")
        return fig

    return to_bgr(figure())


def _priors_panel(ax, spec: PriorSpec, layer, index: int) -> None:
    from matplotlib.patches import Rectangle

    f = layer.feature_map
    centres = (np.arange(f) + spec.offset) * layer.step  # (f,) input pixels
    if f <= 40:
        cx, cy = np.meshgrid(centres, centres)  # (f, f) each
        ax.scatter(cx.ravel(), cy.ravel(), s=2, color="#999999", linewidths=0)
    picks = sorted({(f // 2, f // 2), (0, 0), (f - 1, f - 1)})
    names = _box_names(layer)
    for i, j in picks:
        for box_index, (w, h) in enumerate(layer_box_sizes(layer)):
            b, g, r = class_colour(box_index + 1)
            ax.add_patch(Rectangle((centres[j] - w / 2, centres[i] - h / 2), w, h, fill=False, linewidth=1,
                                   edgecolor=(r / 255, g / 255, b / 255), label=names[box_index] if (i, j) == picks[0] else None))
    ax.set(xlim=(0, spec.image_size), ylim=(spec.image_size, 0), aspect="equal",
           xlabel="x (input pixels)", ylabel="y (input pixels)",
           title=f"layer {index}: {f}x{f}, step {layer.step:g}, {layer.boxes_per_location} boxes/loc")
    ax.grid(False)
    ax.legend(loc="lower right", fontsize=6, frameon=True, framealpha=0.8)


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


def _text_colour(background_bgr: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black on light backgrounds, white on dark ones (ITU-R BT.601 luma)."""
    b, g, r = background_bgr
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)


def line_style(width: int, height: int) -> tuple[int, float, int]:
    """``(box line thickness, font scale, text thickness)`` for a ``width`` x ``height`` image: about
    2 px lines and a 0.6 font (16 px capitals) on 640x480, 1 px and 0.4 on small images, growing
    linearly with the mean side, so labels keep the same share of the image at any resolution."""
    side = (width + height) / 2
    thickness = max(1, round(0.003 * side))
    return thickness, max(0.4, 0.0011 * side), max(1, thickness - 1)


# Label rows tried above, inside and below each box; labels placed nearby also offer the places
# touching them (above, below, left, right), which packs a crowd of labels without gaps. At most
# _NEIGHBOURS of them, the nearest, so 200 detections stay quick.
_STACK = 10
_NEIGHBOURS = 24
_GAP = 1  # background pixels between neighbouring labels, so two of one colour do not read as one


def place_labels(boxes_xyxy_px: ArrayLike, label_sizes: ArrayLike, width: int, height: int) -> np.ndarray:
    """Where to put each detection's label so that labels do not cover each other where possible.

    Greedy, in the given order (pass the best detection first: it gets its preferred place): each
    label takes the first free place among, in this order: just above its box, inside it at the
    top (when there is no room above), below it, inside at the bottom (each left-aligned with the
    box, then right-aligned); then, nearest the box first, rows stacked further above, inside and
    below, and the places touching labels already placed nearby. A place is free when it overlaps
    no label placed before (nor comes within a pixel of one); with none free, the one overlapping
    least wins. Every label lies inside the image (unless it is larger than the image).

    Args:
        boxes_xyxy_px: [K, 4] xyxy, pixels.
        label_sizes: [K, 2] ``(w, h)`` of each label box in pixels.

    Returns:
        np.ndarray[K, 2] int64: the top-left corner ``(x, y)`` of each label box.
    """
    boxes = np.round(np.asarray(boxes_xyxy_px, dtype=np.float64).reshape(-1, 4))  # (K, 4)
    sizes = np.asarray(label_sizes, dtype=np.float64).reshape(-1, 2)  # (K, 2)
    placed = np.zeros((len(boxes), 4))  # xyxy (end exclusive) of the labels placed so far: rows :k
    corners = np.zeros((len(boxes), 2), dtype=np.int64)
    for k, (box, (w, h)) in enumerate(zip(boxes, sizes)):
        x1, y1, x2, y2 = box
        reach = np.array([x1 - 2 * w, y1 - (_STACK + 2) * h, x2 + 2 * w, y2 + (_STACK + 2) * h])
        near = placed[:k][(placed[:k, 2] > reach[0]) & (placed[:k, 0] < reach[2])
                          & (placed[:k, 3] > reach[1]) & (placed[:k, 1] < reach[3])]  # (N, 4)
        cand = _label_candidates(box, w, h, near, width, height)  # (M, 2), preference order
        ox = np.minimum(cand[:, None, 0] + w, near[None, :, 2]) - np.maximum(cand[:, None, 0], near[None, :, 0])
        oy = np.minimum(cand[:, None, 1] + h, near[None, :, 3]) - np.maximum(cand[:, None, 1], near[None, :, 1])
        overlap = (np.clip(ox, 0, None) * np.clip(oy, 0, None)).sum(axis=1)  # (M,) area covered
        x, y = cand[int(np.argmin(overlap))]  # the first of the least covered
        corners[k] = (x, y)
        # kept _GAP px larger: the next labels keep that much background between them
        placed[k] = (x - _GAP, y - _GAP, x + w + _GAP, y + h + _GAP)
    return corners


def _label_candidates(box: np.ndarray, w: float, h: float, near: np.ndarray, width: int, height: int) -> np.ndarray:
    """Top-left corners [M, 2] for a ``w`` x ``h`` label of ``box`` (xyxy), inside the image, in
    :func:`place_labels`' preference order; ``near``: [N, 4] labels placed nearby."""
    x1, y1, x2, y2 = box
    centres = (near[:, :2] + near[:, 2:]) / 2  # (N, 2)
    near = near[np.argsort(np.abs(centres - [x1 + w / 2, y1 - h / 2]).sum(axis=1), kind="stable")[:_NEIGHBOURS]]  # (N, 4)
    steps = np.arange(1, _STACK + 1)
    first_tops = np.array([y1 - h, y1, y2, y2 - h])
    stacked = np.concatenate((y1 - h - steps * h, y1 + steps * h, y2 + steps * h))  # (3 * _STACK,)
    left, top, right, bottom = near.T  # (N,) each
    above, below = top - h, bottom
    first = np.array([(x, y) for y in first_tops for x in (x1, x2 - w)])  # (8, 2) y-major
    rest = np.concatenate([
        np.column_stack(pair) for pair in (
            (np.repeat(x1, len(stacked)), stacked), (np.repeat(x2 - w, len(stacked)), stacked),
            (left, above), (left, below), (np.full_like(above, x1), above), (np.full_like(below, x1), below),
            (np.full_like(above, x2 - w), above), (np.full_like(below, x2 - w), below),  # touching above / below
            (right, top), (left - w, top), (right, np.full_like(top, y1 - h)), (left - w, np.full_like(top, y1 - h)),
        )
    ])  # (M - 8, 2)
    # the others nearest the box first: the gap between label and box, in pixels (0 when touching)
    gap = (np.clip(np.maximum(x1 - (rest[:, 0] + w), rest[:, 0] - x2), 0, None)
           + np.clip(np.maximum(y1 - (rest[:, 1] + h), rest[:, 1] - y2), 0, None))
    cand = np.concatenate((first, rest[np.argsort(gap, kind="stable")]))  # (M, 2)
    cand[:, 0] = np.clip(cand[:, 0], 0, max(width - w, 0))
    inside = (cand[:, 1] >= 0) & (cand[:, 1] + h <= height)
    return cand[inside] if inside.any() else np.array([[cand[0, 0], max(0.0, min(y1, height - h))]])


def draw_detections(
    image_bgr: np.ndarray,
    boxes_xyxy_px: ArrayLike,
    labels: ArrayLike,
    scores: ArrayLike,
    class_names: list[str],
    captions: list[str] | None = None,
) -> np.ndarray:
    """Draw detections on a copy of an image: a box per detection in its class colour
    (:func:`class_colour`) and a ``name score`` label on a filled background, placed by
    :func:`place_labels` (above the box, else inside it, else where it covers no other label).
    Line width and font size follow the image size (:func:`line_style`).

    ``examples/onnx_inference.py`` draws the same picture without ssdcli (tested pixel for pixel).

    Args:
        image_bgr: np.ndarray[H, W, 3] uint8 BGR.
        boxes_xyxy_px: [K, 4] xyxy in pixels of this image.
        labels: [K] 1-based class indices into ``class_names``.
        scores: [K] in [0, 1].
        class_names: the model's classes; a label outside them is drawn as ``class <n>``.
        captions: [K] texts to draw instead of ``name score`` (e.g. with an error type added).

    Returns:
        A new np.ndarray[H, W, 3] uint8 BGR; boxes, then labels, drawn lowest score first so the
        best is on top; the best labels are placed first.
    """
    import cv2

    canvas = np.array(image_bgr, dtype=np.uint8, order="C")  # a contiguous copy (views may be flipped)
    height, width = canvas.shape[:2]
    boxes = np.asarray(boxes_xyxy_px, dtype=np.float64).reshape(-1, 4)  # (K, 4)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)  # (K,)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)  # (K,)
    thickness, font_scale, text_thickness = line_style(width, height)
    pad = thickness
    order = np.argsort(-scores, kind="stable")  # best first
    texts, sizes = [], []
    for k in order:
        name = class_names[labels[k] - 1] if 1 <= labels[k] <= len(class_names) else f"class {labels[k]}"
        texts.append(captions[k] if captions is not None else f"{name} {scores[k]:.2f}")
        (text_w, text_h), baseline = cv2.getTextSize(texts[-1], cv2.FONT_HERSHEY_SIMPLEX, font_scale, text_thickness)
        sizes.append((text_w + 2 * pad, text_h + baseline + 2 * pad, text_h))
    corners = place_labels(boxes[order], [size[:2] for size in sizes], width, height)
    for k in order[::-1]:
        x1, y1, x2, y2 = (int(round(v)) for v in boxes[k])
        cv2.rectangle(canvas, (x1, y1), (x2, y2), class_colour(int(labels[k])), thickness, cv2.LINE_8)  # crisp
    for i in range(len(order) - 1, -1, -1):
        colour = class_colour(int(labels[order[i]]))
        (left, top), (box_w, box_h, text_h) = corners[i], sizes[i]
        cv2.rectangle(canvas, (left, top), (left + box_w - 1, top + box_h - 1), colour, cv2.FILLED)
        cv2.putText(canvas, texts[i], (left + pad, top + pad + text_h), cv2.FONT_HERSHEY_SIMPLEX, font_scale,
                    _text_colour(colour), text_thickness, cv2.LINE_AA)
    return canvas


def draw_ground_truth(
    image_bgr: np.ndarray,
    boxes_xyxy_px: ArrayLike,
    labels: ArrayLike,
    class_names: list[str],
    missed: ArrayLike | None = None,
) -> np.ndarray:
    """Draw ground-truth boxes on a copy of an image in a style apart from detections: dashed
    outlines in the class colour, the name on a white tag at the box's bottom-left corner;
    objects marked ``missed`` dashed in red and tagged ``missed: name``.

    Args:
        image_bgr: np.ndarray[H, W, 3] uint8 BGR.
        boxes_xyxy_px: [K, 4] xyxy in pixels of this image.
        labels: [K] 1-based class indices into ``class_names``.
        missed: [K] bool, or ``None`` for none.

    Returns:
        A new np.ndarray[H, W, 3] uint8 BGR.
    """
    import cv2

    canvas = np.array(image_bgr, dtype=np.uint8, order="C")
    height, width = canvas.shape[:2]
    boxes = np.asarray(boxes_xyxy_px, dtype=np.float64).reshape(-1, 4)  # (K, 4)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)  # (K,)
    missed = np.zeros(labels.shape, bool) if missed is None else np.asarray(missed, bool).reshape(-1)
    thickness, font_scale, text_thickness = line_style(width, height)
    dash = 6 * thickness
    rows, cols = np.mgrid[0:height, 0:width]  # (H, W) each
    dashes = ((rows + cols) // dash) % 2 == 0  # diagonal stripes: dashes on every edge direction
    for k in range(labels.size):
        label = int(labels[k])
        colour = (0, 0, 255) if missed[k] else class_colour(label)
        x1, y1, x2, y2 = (int(round(v)) for v in boxes[k])
        outline = np.zeros((height, width), np.uint8)
        cv2.rectangle(outline, (x1, y1), (x2, y2), 1, thickness, cv2.LINE_8)
        canvas[(outline > 0) & dashes] = colour
        name = class_names[label - 1] if 1 <= label <= len(class_names) else f"class {label}"
        text = f"missed: {name}" if missed[k] else f"GT {name}"
        (text_w, text_h), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, text_thickness)
        left = min(max(x1, 0), max(width - text_w - 2, 0))
        bottom = min(max(y2, text_h + baseline + 2), height)
        cv2.rectangle(canvas, (left, bottom - text_h - baseline - 2), (left + text_w + 2, bottom), (255, 255, 255), cv2.FILLED)
        cv2.putText(canvas, text, (left + 1, bottom - baseline - 1), cv2.FONT_HERSHEY_SIMPLEX, font_scale,
                    colour if missed[k] else (0, 0, 0), text_thickness, cv2.LINE_AA)
    return canvas


def open_video_writer(path: Path, fps: float, size: tuple[int, int]):
    """A ``cv2.VideoWriter`` for ``path`` with the MPEG-4 Part 2 (``mp4v``) codec, which OpenCV's
    bundled FFmpeg always has; ``size`` is ``(width, height)``.

    Raises:
        UserError: the file cannot be opened for writing.
    """
    import cv2

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{path}: cannot write a video there ({exc.strerror}); choose a writable folder") from None
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), tuple(int(v) for v in size))
    if not writer.isOpened():
        writer.release()
        raise UserError(f"{path}: cannot write a video there; use a .mp4 name in a writable folder")
    return writer


WINDOW = "ssd detect"


def check_display() -> None:
    """Raise :class:`UserError` when no display is set: on Linux without one OpenCV would abort
    the process at the first :func:`show_image`."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise UserError("--show needs a display, and neither DISPLAY nor WAYLAND_DISPLAY is set; use --output DIR")


def show_image(image_bgr: np.ndarray) -> bool:
    """Show ``image_bgr`` in the ``ssd detect`` window; ``True`` when q or Esc was pressed (stop).

    Raises:
        UserError: OpenCV cannot open a window (e.g. a build without GUI support).
    """
    import cv2

    try:
        cv2.imshow(WINDOW, image_bgr)
        key = cv2.waitKey(1) & 0xFF
    except cv2.error as exc:
        raise UserError(f"--show: cannot open a window ({exc.msg.strip()}); use --output DIR instead") from None
    return key in (ord("q"), 27)


def close_windows() -> None:
    """Close the windows :func:`show_image` opened."""
    import cv2

    cv2.destroyAllWindows()
