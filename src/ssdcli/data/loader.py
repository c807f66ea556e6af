"""Training batches: a Dataset over :class:`ImageRecord`, collate, padding and seeded loaders.

Reproducibility: training wraps the dataset in :class:`ssdcli.train.sampling.SeededSamples`
(each sample's augmentation seeded by ``(seed, epoch, index)``) and orders it with
:class:`ssdcli.train.sampling.EpochSampler` (each epoch's order from ``(seed, epoch)``), so an
epoch is the same whether the run went straight through or was resumed, with any number of workers.

Unreadable images: the readers decode every image before training starts, so an image that
fails now was changed or damaged during the run. :class:`DetectionTrainDataset` then raises
:class:`~ssdcli.errors.DataError` naming the file rather than silently training on a different
sample: the run stops with a clear message and resumes from ``last.pt`` once the file is fixed or
removed. From a DataLoader worker PyTorch re-raises it in the main process with the worker's
traceback inside the message; iterate with :func:`iterate_loader` to get the one-line message back.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from ssdcli.data.images import DecodedImage, read_image_rgb, read_image_rgb_at_least
from ssdcli.data.records import ImageRecord
from ssdcli.errors import DataError

# (image uint8[H, W, 3], boxes_xyxy_px [N, 4], labels [N]) -> (image Tensor[3, S, S],
# boxes_xyxy_norm Tensor[N', 4], labels Tensor[N']): TrainTransform or EvalTransform. A transform
# with a `source_side` attribute is given large JPEGs decoded reduced to it (boxes scaled alike).
Transform = Callable[[np.ndarray, Tensor, Tensor], tuple[Tensor, Tensor, Tensor]]
Target = dict[str, Tensor | int]


class DetectionTrainDataset(Dataset):
    """Images and training targets of a list of records.

    Args:
        records: the images, e.g. ``DetectionDataset.records``.
        transform: :class:`~ssdcli.data.transforms.TrainTransform` or ``EvalTransform``.
        use_difficult: keep VOC ``difficult`` boxes as targets (the SSD recipe leaves them out).
            COCO ``iscrowd`` boxes are never targets.

    Item ``i``: ``(image float Tensor[3, S, S], {"boxes_xyxy_norm": Tensor[N, 4] in [0, 1],
    "labels": int64 Tensor[N] 1-based, "index": i})``; N may be 0 (a negative image).
    """

    def __init__(self, records: Sequence[ImageRecord], transform: Transform, use_difficult: bool = False):
        self.records = list(records)
        self.transform = transform
        self.use_difficult = use_difficult

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        record = self.records[index]
        image, scale = self._read(record)
        keep = ~np.asarray(record.iscrowd, dtype=bool)
        if not self.use_difficult:
            keep &= ~np.asarray(record.difficult, dtype=bool)
        boxes = torch.from_numpy(np.asarray(record.boxes_xyxy_px, dtype=np.float32)[keep]).reshape(-1, 4)  # (N, 4)
        labels = torch.from_numpy(np.asarray(record.labels, dtype=np.int64)[keep])  # (N,)
        image_t, boxes_xyxy_norm, labels = self.transform(image, boxes / scale, labels)
        return image_t, {"boxes_xyxy_norm": boxes_xyxy_norm, "labels": labels, "index": index}

    def _read(self, record: ImageRecord) -> tuple[np.ndarray, int]:
        """The record's pixels (a large JPEG reduced to the transform's ``source_side``,
        :mod:`ssdcli.data.resolution`) and the scale they were decoded at."""
        side = getattr(self.transform, "source_side", None)
        try:
            if side is None:
                rgb = read_image_rgb(record.image_path)
                decoded = DecodedImage(rgb, 1, rgb.shape[1], rgb.shape[0])
            else:
                decoded = read_image_rgb_at_least(record.image_path, side, side)
        except DataError as exc:
            raise DataError(
                f"{exc}; it was readable when the dataset was loaded. Fix or remove it, then "
                "continue with --resume"
            ) from None
        if (decoded.height, decoded.width) != (record.height, record.width):
            raise DataError(
                f"{record.image_path}: image is now {decoded.width}x{decoded.height} pixels but was "
                f"{record.width}x{record.height} when the dataset was loaded; its boxes no longer fit"
            )
        return decoded.rgb, decoded.scale


def collate(batch: Sequence[tuple[Tensor, Target]]) -> tuple[Tensor, list[Target]]:
    """Stack images; keep targets as a list (their box counts differ).

    Returns:
        ``(images Tensor[B, 3, S, S], targets)``, targets as the dataset returns them.
    """
    images = torch.stack([image for image, _ in batch])  # (B, 3, S, S)
    return images, [target for _, target in batch]


def pad_targets(targets: Sequence[Target]) -> tuple[Tensor, Tensor]:
    """Pad a batch's targets to one box count G = max(1, most boxes in an image).

    Returns:
        ``boxes_xyxy_norm`` Tensor[B, G, 4], zeros for padding (a zero-area box, IoU 0 with every
        prior); ``labels`` int64 Tensor[B, G], 0 (background) for padding. G >= 1 so that a batch
        of negative images still has a well-formed target tensor.
    """
    counts = [int(t["labels"].shape[0]) for t in targets]
    num_slots = max([1, *counts])
    first = targets[0]["boxes_xyxy_norm"] if targets else torch.zeros(0, 4)
    boxes = first.new_zeros((len(targets), num_slots, 4))  # (B, G, 4)
    labels = torch.zeros((len(targets), num_slots), dtype=torch.int64, device=first.device)  # (B, G)
    # One copy per image (B is small); the boxes themselves are copied as whole tensors.
    for i, (target, count) in enumerate(zip(targets, counts)):
        boxes[i, :count] = target["boxes_xyxy_norm"]
        labels[i, :count] = target["labels"]
    return boxes, labels


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed NumPy and ``random`` from the worker's torch seed.

    PyTorch seeds each worker's torch RNG with ``base_seed + worker_id`` (base drawn from the
    loader's generator) but not NumPy's or Python's (PyTorch "Reproducibility" notes).
    """
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    workers: int,
    seed: int,
    sampler: Sampler | None = None,
    drop_last: bool = False,
) -> DataLoader:
    """A DataLoader with :func:`collate`, seeded workers and its own generator (seeded for epoch 0).

    Args:
        dataset: e.g. :class:`DetectionTrainDataset`.
        shuffle: random order each epoch (ignored when ``sampler`` is given, e.g. a
            DistributedSampler, which shuffles itself).
        workers: worker processes; 0 loads in the main process.
        seed: seeds the loader's own generator (its shuffle order and worker seeds).
        drop_last: drop the last incomplete batch (training: avoids a tiny last batch).
    """
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        worker_init_fn=seed_worker,
        generator=generator,
        drop_last=drop_last,
        # Not persistent: workers restart each epoch, so they see the epoch that
        # sampling.SeededSamples was set to.
        persistent_workers=False,
    )


def iterate_loader(loader: DataLoader) -> Iterator[tuple[Tensor, list[Target]]]:
    """Iterate ``loader``; a :class:`DataError` raised in a worker comes out with only its own message.

    PyTorch re-raises a worker's exception in the main process as the same type with the message
    "Caught DataError in DataLoader worker process 0. Original Traceback ...": the CLI prints a
    user error's message as one line, so this cuts it back to the original message.
    """
    try:
        yield from loader
    except DataError as exc:
        message = str(exc)
        marker = f"{DataError.__module__}.{DataError.__qualname__}: "
        start = message.rfind(marker)
        if start < 0:
            raise
        raise DataError(message[start + len(marker) :].strip()) from None
