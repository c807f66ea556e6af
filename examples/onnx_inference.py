"""Run an SSD exported by `ssd export --format onnx` (with --postprocess, the default) on one image.

Only onnxruntime, numpy and OpenCV: what a deployment needs. Everything about the model (input
size, normalisation, class names, output layout) is read from the file's metadata. Images are read
and drawn as `ssd detect` reads and draws them (transparency on white; labels that avoid each other,
sized to the image).

    python examples/onnx_inference.py best.onnx photo.jpg --output photo_detections.jpg --min-score 0.3

Prints one json line per detection: {"label", "class_id", "score", "box": [x1, y1, x2, y2]} in
pixels of the original image.
"""

from __future__ import annotations

import argparse
import colorsys
import json
import sys

import cv2
import numpy as np
import onnxruntime as ort


def read_metadata(session: ort.InferenceSession) -> dict:
    """The ssdcli metadata: class names, input size, mean/std, post-processing settings."""
    meta = session.get_modelmeta().custom_metadata_map
    if meta.get("ssdcli_export") != "detections":
        sys.exit("this script needs a model exported by `ssd export --format onnx --postprocess`")
    return {
        "class_names": json.loads(meta["class_names"]),
        "image_size": int(meta["image_size"]),
        "mean": np.array(json.loads(meta["mean"]), dtype=np.float32),
        "std": np.array(json.loads(meta["std"]), dtype=np.float32),
        "input_name": meta["input_name"],
        # older files have neither: RGB, resized on the uint8 image
        "channel_order": meta.get("channel_order", "rgb"),
        "resize": meta.get("resize", "uint8"),
    }


def read_image(path: str) -> np.ndarray | None:
    """BGR uint8 [H, W, 3], transparent pixels composited on white as ssdcli's reader does (the
    model was trained that way); None when OpenCV cannot read the file."""
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    raw = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if image is not None and raw is not None and raw.ndim == 3 and raw.shape[2] == 4 and raw.shape[:2] == image.shape[:2]:
        alpha = raw[:, :, 3:].astype(np.float32) / np.iinfo(raw.dtype).max  # (H, W, 1)
        image = np.rint(image.astype(np.float32) * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    return image


def preprocess(image_bgr: np.ndarray, meta: dict) -> np.ndarray:
    """BGR uint8 [H, W, 3] -> float32 [1, 3, S, S] as the metadata's input_format says: the
    channels in its channel_order, /255, (x - mean) / std, resized to S x S without keeping the
    aspect ratio (its "float" rule, an imported torchvision model's, resizes the normalised image)."""
    size = meta["image_size"]
    image = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB) if meta["channel_order"] == "rgb" else image_bgr
    if meta["resize"] == "float":
        normalised = (image.astype(np.float32) / 255.0 - meta["mean"]) / meta["std"]
        normalised = cv2.resize(normalised, (size, size), interpolation=cv2.INTER_LINEAR)
    else:
        resized = cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)
        normalised = (resized.astype(np.float32) / 255.0 - meta["mean"]) / meta["std"]
    return np.ascontiguousarray(normalised.transpose(2, 0, 1)[None])  # (1, 3, S, S)


def detect(session: ort.InferenceSession, meta: dict, image_bgr: np.ndarray, min_score: float) -> list[dict]:
    """Detections in original-image pixels, best first."""
    boxes, scores, labels, batch_index = session.run(None, {meta["input_name"]: preprocess(image_bgr, meta)})
    height, width = image_bgr.shape[:2]
    # boxes are xyxy normalised to [0, 1] of the original image: x scales by width, y by height.
    boxes_px = boxes * np.array([width, height, width, height], dtype=np.float32)
    keep = (batch_index == 0) & (scores > min_score)
    return [
        {
            "label": meta["class_names"][int(label) - 1],  # labels are 1-based
            "class_id": int(label),
            "score": round(float(score), 4),
            "box": [round(float(v), 1) for v in box],
        }
        for box, score, label in zip(boxes_px[keep], scores[keep], labels[keep])
    ]


# Drawing: the same picture as `ssd detect` (ssdcli.render.draw_detections; a test compares them
# pixel for pixel). Copied rather than imported so that this script needs only onnxruntime, numpy
# and OpenCV: class colours, line and text size from the image size, and labels placed greedily,
# best first, where they cover no other label (above the box, else inside it, else nearby).
STACK, NEIGHBOURS, GAP = 10, 24, 1


def class_colour(class_id: int) -> tuple[int, int, int]:
    """A stable BGR colour per class: golden-ratio hue steps."""
    r, g, b = colorsys.hsv_to_rgb((class_id * 0.618033988749895) % 1.0, 0.85, 0.95)
    return int(b * 255), int(g * 255), int(r * 255)


def line_style(width: int, height: int) -> tuple[int, float, int]:
    """(box line thickness, font scale, text thickness): ~2 px and 0.6 on 640x480, linear in the size."""
    side = (width + height) / 2
    thickness = max(1, round(0.003 * side))
    return thickness, max(0.4, 0.0011 * side), max(1, thickness - 1)


def label_candidates(box, w, h, near, width, height) -> np.ndarray:
    """Top-left corners [M, 2] for a w x h label, preferred first, inside the image."""
    x1, y1, x2, y2 = box
    centres = (near[:, :2] + near[:, 2:]) / 2
    near = near[np.argsort(np.abs(centres - [x1 + w / 2, y1 - h / 2]).sum(axis=1), kind="stable")[:NEIGHBOURS]]
    steps = np.arange(1, STACK + 1)
    stacked = np.concatenate((y1 - h - steps * h, y1 + steps * h, y2 + steps * h))
    left, top, right, bottom = near.T
    above, below = top - h, bottom
    first = np.array([(x, y) for y in (y1 - h, y1, y2, y2 - h) for x in (x1, x2 - w)])
    rest = np.concatenate([np.column_stack(pair) for pair in (
        (np.repeat(x1, len(stacked)), stacked), (np.repeat(x2 - w, len(stacked)), stacked),
        (left, above), (left, below), (np.full_like(above, x1), above), (np.full_like(below, x1), below),
        (np.full_like(above, x2 - w), above), (np.full_like(below, x2 - w), below),
        (right, top), (left - w, top), (right, np.full_like(top, y1 - h)), (left - w, np.full_like(top, y1 - h)),
    )])
    gap = (np.clip(np.maximum(x1 - (rest[:, 0] + w), rest[:, 0] - x2), 0, None)
           + np.clip(np.maximum(y1 - (rest[:, 1] + h), rest[:, 1] - y2), 0, None))
    cand = np.concatenate((first, rest[np.argsort(gap, kind="stable")]))
    cand[:, 0] = np.clip(cand[:, 0], 0, max(width - w, 0))
    inside = (cand[:, 1] >= 0) & (cand[:, 1] + h <= height)
    return cand[inside] if inside.any() else np.array([[cand[0, 0], max(0.0, min(y1, height - h))]])


def place_labels(boxes: np.ndarray, sizes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Top-left corners [K, 2] of the labels of boxes [K, 4] (best first), sizes [K, 2] (w, h)."""
    placed = np.zeros((len(boxes), 4))
    corners = np.zeros((len(boxes), 2), dtype=np.int64)
    for k, (box, (w, h)) in enumerate(zip(np.round(boxes), sizes)):
        x1, y1, x2, y2 = box
        p = placed[:k]
        near = p[(p[:, 2] > x1 - 2 * w) & (p[:, 0] < x2 + 2 * w)
                 & (p[:, 3] > y1 - (STACK + 2) * h) & (p[:, 1] < y2 + (STACK + 2) * h)]
        cand = label_candidates(box, w, h, near, width, height)
        ox = np.minimum(cand[:, None, 0] + w, near[None, :, 2]) - np.maximum(cand[:, None, 0], near[None, :, 0])
        oy = np.minimum(cand[:, None, 1] + h, near[None, :, 3]) - np.maximum(cand[:, None, 1], near[None, :, 1])
        x, y = cand[int(np.argmin((np.clip(ox, 0, None) * np.clip(oy, 0, None)).sum(axis=1)))]
        corners[k] = (x, y)
        placed[k] = (x - GAP, y - GAP, x + w + GAP, y + h + GAP)
    return corners


def draw(image_bgr: np.ndarray, detections: list[dict]) -> np.ndarray:
    """A copy of the image with a box and a "label score" tag per detection."""
    canvas = image_bgr.copy()
    height, width = canvas.shape[:2]
    thickness, scale, text_thickness = line_style(width, height)
    font = cv2.FONT_HERSHEY_SIMPLEX
    dets = sorted(detections, key=lambda d: -d["score"])  # best first: it gets the best label place
    texts = [f"{d['label']} {d['score']:.2f}" for d in dets]
    metrics = [cv2.getTextSize(text, font, scale, text_thickness) for text in texts]
    sizes = np.array([(w + 2 * thickness, h + b + 2 * thickness) for (w, h), b in metrics], dtype=np.float64)
    boxes = np.array([d["box"] for d in dets], dtype=np.float64).reshape(-1, 4)
    corners = place_labels(boxes, sizes.reshape(-1, 2), width, height)
    for d in reversed(dets):
        x1, y1, x2, y2 = (int(round(v)) for v in d["box"])
        cv2.rectangle(canvas, (x1, y1), (x2, y2), class_colour(d["class_id"]), thickness, cv2.LINE_8)
    for i in reversed(range(len(dets))):
        colour = class_colour(dets[i]["class_id"])
        (left, top), (w, h), text_h = corners[i], sizes[i].astype(int), metrics[i][0][1]
        b, g, r = colour
        ink = (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)
        cv2.rectangle(canvas, (int(left), int(top)), (int(left + w - 1), int(top + h - 1)), colour, cv2.FILLED)
        cv2.putText(canvas, texts[i], (int(left + thickness), int(top + thickness + text_h)), font, scale, ink,
                    text_thickness, cv2.LINE_AA)
    return canvas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="an .onnx file from `ssd export --format onnx`")
    parser.add_argument("image", help="an image file")
    parser.add_argument("--output", default="detections.jpg", help="where to save the drawn image")
    parser.add_argument("--min-score", type=float, default=0.3, help="show detections scoring above this")
    args = parser.parse_args()

    session = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    meta = read_metadata(session)
    image = read_image(args.image)
    if image is None:
        sys.exit(f"cannot read image {args.image}")
    detections = detect(session, meta, image, args.min_score)
    for det in detections:
        print(json.dumps(det))
    if not cv2.imwrite(args.output, draw(image, detections)):
        sys.exit(f"cannot write {args.output}")
    print(f"{len(detections)} detections, drawn in {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
