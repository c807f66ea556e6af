"""Run an SSD exported by `ssd export --format onnx` (with --postprocess, the default) on one image.

Only onnxruntime, numpy and OpenCV: what a deployment needs. Everything about the model (input
size, normalisation, class names, output layout) is read from the file's metadata.

    python examples/onnx_inference.py best.onnx photo.jpg --output photo_detections.jpg --min-score 0.3

Prints one json line per detection: {"label", "class_id", "score", "box": [x1, y1, x2, y2]} in
pixels of the original image.
"""

from __future__ import annotations

import argparse
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
    }


def preprocess(image_bgr: np.ndarray, meta: dict) -> np.ndarray:
    """BGR uint8 [H, W, 3] -> float32 [1, 3, S, S] as the metadata's input_format says:
    RGB, /255, then (x - mean) / std, resized to S x S without keeping the aspect ratio."""
    size = meta["image_size"]
    rgb = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB)
    resized = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_LINEAR)
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


def draw(image_bgr: np.ndarray, detections: list[dict]) -> np.ndarray:
    """A copy of the image with a box and "label score" per detection."""
    canvas = image_bgr.copy()
    for det in detections:
        x1, y1, x2, y2 = (round(v) for v in det["box"])
        hue = (det["class_id"] * 47) % 180  # a stable colour per class
        colour = tuple(int(c) for c in cv2.cvtColor(np.uint8([[[hue, 200, 230]]]), cv2.COLOR_HSV2BGR)[0, 0])
        cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, 2)
        text = f"{det['label']} {det['score']:.2f}"
        cv2.putText(canvas, text, (x1, max(y1 - 4, 12)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, 1, cv2.LINE_AA)
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
    image = cv2.imread(args.image, cv2.IMREAD_COLOR)
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
