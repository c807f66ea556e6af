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


def draw_detections(
    image_bgr: np.ndarray,
    boxes_xyxy_px: ArrayLike,
    labels: ArrayLike,
    scores: ArrayLike,
    class_names: list[str],
    captions: list[str] | None = None,
) -> np.ndarray:
    """Draw detections on a copy of an image: a box per detection in its class colour
    (:func:`class_colour`) and a ``name score`` label on a filled background above the box (inside
    it when the box touches the top edge). Line width and font size grow with the image.

    Args:
        image_bgr: np.ndarray[H, W, 3] uint8 BGR.
        boxes_xyxy_px: [K, 4] xyxy in pixels of this image.
        labels: [K] 1-based class indices into ``class_names``.
        scores: [K] in [0, 1].
        class_names: the model's classes; a label outside them is drawn as ``class <n>``.
        captions: [K] texts to draw instead of ``name score`` (e.g. with an error type added).

    Returns:
        A new np.ndarray[H, W, 3] uint8 BGR; drawn lowest score first so the best box is on top.
    """
    import cv2

    canvas = np.array(image_bgr, dtype=np.uint8, order="C")  # a contiguous copy (views may be flipped)
    height, width = canvas.shape[:2]
    boxes = np.asarray(boxes_xyxy_px, dtype=np.float64).reshape(-1, 4)  # (K, 4)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)  # (K,)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)  # (K,)
    # ~2 px on a 640x480 image, 1 px on small ones, growing linearly with the image side.
    side = (width + height) / 2
    thickness = max(1, round(0.003 * side))
    font_scale = max(0.4, 0.0011 * side)  # ~0.6 on 640x480: readable, not covering small objects
    text_thickness = max(1, thickness - 1)
    for k in np.argsort(scores, kind="stable"):
        label = int(labels[k])
        colour = class_colour(label)
        x1, y1, x2, y2 = (int(round(v)) for v in boxes[k])
        cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, thickness, cv2.LINE_8)  # crisp: axis-aligned
        name = class_names[label - 1] if 1 <= label <= len(class_names) else f"class {label}"
        text = captions[k] if captions is not None else f"{name} {scores[k]:.2f}"
        (text_w, text_h), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, text_thickness)
        pad = thickness
        box_h = text_h + baseline + 2 * pad
        top = y1 - box_h if y1 - box_h >= 0 else y1  # above the box, or inside it at the top edge
        left = min(max(x1, 0), max(width - text_w - 2 * pad, 0))
        cv2.rectangle(canvas, (left, top), (left + text_w + 2 * pad, top + box_h), colour, cv2.FILLED)
        cv2.putText(
            canvas, text, (left + pad, top + pad + text_h), cv2.FONT_HERSHEY_SIMPLEX, font_scale,
            _text_colour(colour), text_thickness, cv2.LINE_AA,
        )
    return canvas


def _line_style(side: float) -> tuple[int, float, int]:
    """``(thickness, font scale, text thickness)`` for an image of mean side ``side`` pixels:
    ~2 px lines on 640x480, growing linearly with the image (as :func:`draw_detections`)."""
    thickness = max(1, round(0.003 * side))
    return thickness, max(0.4, 0.0011 * side), max(1, thickness - 1)


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
    thickness, font_scale, text_thickness = _line_style((width + height) / 2)
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
