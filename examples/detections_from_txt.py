"""Turn another detector's per-image text files into the detections json `ssd eval` scores.

Many tools (the Cartucho/mAP evaluator, darknet exports, ...) write one ``<image stem>.txt`` per
image with a line per detection::

    <class name> <score> <left> <top> <right> <bottom>

This script writes them as COCO results for VOC-style data (SPEC "detections file"):
``image_id`` = the file stem, ``category_id`` = the 1-based index of the class in the dataset's
class list, ``bbox`` = [x, y, w, h] in continuous 0-based pixels. Then::

    ssd data check my_voc_folder --json check.json        # the class list, in index order
    python examples/detections_from_txt.py detections/ --classes-json check.json --output dets.json
    ssd eval --detections dets.json --data my_voc_folder

Coordinates are read as 1-based inclusive pixels (VOC's convention, and Cartucho's); pass
``--zero-based`` for continuous 0-based corners. Lines of classes the dataset does not have are
skipped and counted.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def read_class_list(classes_json: Path | None, classes_txt: Path | None) -> list[str]:
    if classes_json is not None:
        return list(json.loads(classes_json.read_text())["classes"])
    return [line.strip() for line in classes_txt.read_text().splitlines() if line.strip()]


def convert(folder: Path, classes: list[str], zero_based: bool) -> tuple[list[dict], int]:
    index = {name: k + 1 for k, name in enumerate(classes)}
    detections, skipped = [], 0
    for txt in sorted(folder.glob("*.txt")):
        for number, line in enumerate(txt.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 6:
                raise SystemExit(f"{txt}:{number}: expected '<class> <score> <left> <top> <right> <bottom>'")
            name, score, left, top, right, bottom = parts[0], *map(float, parts[1:])
            if name not in index:
                skipped += 1
                continue
            if not zero_based:  # 1-based inclusive -> continuous 0-based
                left, top = left - 1, top - 1
            detections.append(
                {"image_id": txt.stem, "category_id": index[name], "bbox": [left, top, right - left, bottom - top],
                 "score": score}
            )
    return detections, skipped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="folder of <image stem>.txt detection files")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--classes-json", type=Path, help="the json `ssd data check DIR --json FILE` writes")
    source.add_argument("--classes", type=Path, help="a class list file, one name per line, in index order")
    parser.add_argument("--output", type=Path, required=True, help="detections json to write")
    parser.add_argument("--zero-based", action="store_true", help="coordinates are continuous 0-based corners")
    args = parser.parse_args(argv)

    classes = read_class_list(args.classes_json, args.classes)
    detections, skipped = convert(args.folder, classes, args.zero_based)
    args.output.write_text(json.dumps(detections))
    print(f"wrote {len(detections)} detections to {args.output}" + (f"; skipped {skipped} of other classes" if skipped else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
