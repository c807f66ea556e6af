"""Datasets: VOC / COCO readers, the problems they find, augmentation and batching."""
