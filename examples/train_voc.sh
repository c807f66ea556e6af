#!/usr/bin/env bash
# Reproduce the paper's PASCAL VOC setting: SSD300 trained on VOC2007 trainval + VOC2012 trainval,
# tested on VOC2007 test (the paper reports 74.3 % mAP for SSD300, 76.8 % for SSD512, VOC07 metric).
#
# Expects the usual layout: $VOC/VOC2007/{Annotations,JPEGImages,ImageSets/Main} and $VOC/VOC2012/...
# and torchvision's ImageNet VGG16 weights in the torch hub cache (or BACKBONE=path/to/vgg16.pth).
set -euo pipefail

VOC=${VOC:-data/VOCdevkit}
ARCH=${ARCH:-ssd300}
RUN=${RUN:-runs/voc_$ARCH}
GPUS=${GPUS:-1}
BACKBONE_FLAG=()
[ -n "${BACKBONE:-}" ] && BACKBONE_FLAG=(--backbone-weights "$BACKBONE")

ssd data check "$VOC" --split 07+12 --json "$RUN-data-check.json"
ssd priors --arch "$ARCH" --data "$VOC"        # how well the default boxes fit VOC's objects

# 120 epochs of 16.5k images at batch 32 ~ the paper's 60k iterations; the learning rate steps at
# 2/3 and 5/6 of the run. With several GPUs, --batch-size is per process (32 / GPUS each).
torchrun --standalone --nproc_per_node "$GPUS" -m ssdcli train --data "$VOC" --split 07+12 \
    --val-data "$VOC" --val-split 2007-test --eval-every 10 --arch "$ARCH" \
    --batch-size $((32 / GPUS)) --epochs 120 --output "$RUN" "${BACKBONE_FLAG[@]}"

ssd eval --weights "$RUN/best.pt" --data "$VOC" --split 2007-test --json "$RUN/voc07_test.json" \
    --plot-dir "$RUN/pr_curves"
