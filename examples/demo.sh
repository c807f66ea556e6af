#!/usr/bin/env bash
# The whole SSD lifecycle on a generated dataset, with nothing but the `ssd` command.
# `make demo` runs this; run it yourself with: bash examples/demo.sh [OUTPUT_DIR]
#
#   1. ssd data synth   240 images of coloured shapes (192 train / 48 val), deterministic by seed
#   2. ssd priors       do the default boxes fit the shapes? SSDLite320's own start at 64 px and
#                       miss the small ones; spread from 0.1 of the input they fit
#   3. ssd train        SSDLite320 from scratch on the CPU, with those default boxes
#   4. ssd eval         VOC07 / VOC12 / COCO on the validation split, JSON + precision-recall curves
#   5. ssd detect       rendered detections on the validation images
#   6. ssd priors       a picture of the default boxes
set -euo pipefail

OUT=${1:-runs/demo}
SEED=${SEED:-0}
DEVICE=${DEVICE:-cpu}       # cpu repeats the same numbers on the same machine; DEVICE=auto uses a GPU
EPOCHS=${EPOCHS:-18}
MIN_MAP=${MIN_MAP:-0.8}
start=$(date +%s)

rm -rf "$OUT"
ssd data synth "$OUT/data" --images 240 --seed "$SEED"

SCALES=(0.1 0.95)
ssd priors --arch ssdlite320 --data "$OUT/data" > "$OUT/coverage_preset.txt"
ssd priors --arch ssdlite320 --data "$OUT/data" --prior-scales "${SCALES[@]}" > "$OUT/coverage.txt"

# The learning rate and warm-up are the ssdlite320 recipe's (0.05 x batch/16 = 0.025, 50 iterations):
# twice that rate diverged on one CPU (VOC07 0.036) while it had reached 0.925 on another.
ssd train --data "$OUT/data" --split train --val-data "$OUT/data" --val-split val \
    --arch ssdlite320 --prior-scales "${SCALES[@]}" --backbone-weights none --epochs "$EPOCHS" --batch-size 8 --augment none \
    --schedule cosine --eval-every "$EPOCHS" --device "$DEVICE" --seed "$SEED" \
    --output "$OUT/train"

ssd eval --weights "$OUT/train/best.pt" --data "$OUT/data" --split val --device "$DEVICE" \
    --json "$OUT/metrics.json" --plot-dir "$OUT/pr_curves"

mapfile -t val_images < <(sed "s|^|$OUT/data/JPEGImages/|; s|\$|.jpg|" "$OUT/data/ImageSets/Main/val.txt")
ssd detect "${val_images[@]}" --weights "$OUT/train/best.pt" --device "$DEVICE" \
    --output "$OUT/detections" --json "$OUT/detections.json"

ssd priors --arch ssdlite320 --prior-scales "${SCALES[@]}" --plot "$OUT/priors.png" > "$OUT/priors.txt"

seconds=$(( $(date +%s) - start ))
python3 - "$OUT" "$seconds" "$MIN_MAP" <<'PY'
import json, sys
out, seconds, min_map = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
metrics = json.load(open(f"{out}/metrics.json"))
print(f"""
demo finished in {seconds // 60} min {seconds % 60} s
  VOC07 mAP on the validation split: {metrics['voc07_map']:.4f}   (VOC12 {metrics['voc12_map']:.4f}, COCO AP {metrics['coco_ap']:.4f})
  dataset            {out}/data
  trained model      {out}/train/best.pt   (last.pt, metrics.csv, config.json, manifest.json beside it)
  metrics            {out}/metrics.json, precision-recall curves in {out}/pr_curves/
  detections         {out}/detections/ (rendered) and {out}/detections.json
  default boxes      {out}/priors.png, {out}/priors.txt; how they fit the shapes: {out}/coverage.txt
                     (SSDLite320's preset boxes: {out}/coverage_preset.txt)""")
if metrics["voc07_map"] < min_map:
    sys.exit(f"demo: VOC07 mAP {metrics['voc07_map']:.4f} is below {min_map}: the model did not learn enough")
PY
