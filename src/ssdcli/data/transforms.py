"""SSD training augmentation and the model-input transform (resize + normalise).

Training (:class:`TrainTransform`) follows the SSD paper (sec. 2.2 "Data augmentation") as the
authors' Caffe ``ssd_pascal.py`` and ssd.pytorch ``augmentations.py`` implement it, in this order:

1. photometric distortion: brightness, contrast, saturation, hue, each with p=0.5, contrast
   before or after the HSV steps at random, then a random channel swap with p=0.5;
2. zoom-out ("expand"): with p=0.5 paste the image at a random place on a canvas 1-4x its size
   filled with the mean colour, so the network sees small objects;
3. min-IoU random crop (:func:`sample_iou_crop`);
4. horizontal flip with p=0.5;
5. resize to the square network input (aspect not kept, as SSD does) and normalise.

Steps 1, 2 and 4 are torchvision's ``transforms.v2`` on ``tv_tensors`` (their parameters are the
ssd.pytorch ones: brightness x[0.875, 1.125] ~ ssd.pytorch's +-32/255, contrast and saturation
x[0.5, 1.5], hue +-0.05 turns = +-18 degrees). Step 3 is written here because torchvision's
``RandomIoUCrop`` is wrong for SSD on images without boxes: it never crops them (every trial
needs a box centre inside the crop) and spins through its ``while True`` until it draws the
"whole image" option, many times the cost of a positive image (README "CPU speed notes"); it
also hides which IoU it drew, which the tests need. Ours draws all 50 trials at once and is
vectorised over trials and boxes. Before step 1, an image much larger than the smallest crop
needs is resized down to that (:mod:`ssdcli.data.resolution`).

Every step keeps every box inside its image with positive area; a box that stops being one is
dropped together with its label. Randomness comes only from torch's global RNG (torchvision does
the same), so ``torch.manual_seed`` (or DataLoader's per-worker seeding) makes a run repeatable.

Resizing is torchvision's bilinear resize of the uint8 image with ``antialias=False`` (the same
kernel for training, :class:`EvalTransform` and :func:`to_model_input`), so ``ssd eval`` and
``ssd detect`` feed the network identical tensors for identical images on the same device.
Boxes never go through the resize: they are divided by the pre-resize image size instead,
because normalised coordinates do not change when an image is stretched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from ssdcli.boxes import box_iou_xyxy
from ssdcli.data.resolution import MIN_CROP_SCALE, inference_side, shrink_to_side, training_side

# Caffe ssd_pascal.py batch_sampler, one entry per mode, drawn uniformly (as ssd.pytorch and
# torchvision do): None = the whole image; m > 0 = a crop with IoU >= m with at least one box
# it keeps; 0.0 = any crop that keeps at least one box. (ssd.pytorch's list forgets 0.5.)
CROP_MODES: tuple[float | None, ...] = (None, 0.1, 0.3, 0.5, 0.7, 0.9, 0.0)

ImageLike = np.ndarray | Tensor


@dataclass(frozen=True)
class CropWindow:
    """A crop drawn by :func:`sample_iou_crop`.

    Attributes:
        left, top, right, bottom: the window in integer pixels of the image it was drawn for,
            ``0 <= left < right <= width``, ``0 <= top < bottom <= height``.
        min_iou: the constraint the window satisfies: ``None`` when it is the whole image (drawn,
            or no trial met the drawn constraint), ``0.0`` for an unconstrained crop, otherwise
            at least one kept box has IoU >= ``min_iou`` with the window.
        keep: Tensor[N] bool, the boxes whose centre lies strictly inside the window.
    """

    left: int
    top: int
    right: int
    bottom: int
    min_iou: float | None
    keep: Tensor


def sample_iou_crop(
    boxes_xyxy_px: Tensor,
    height: int,
    width: int,
    *,
    min_scale: float = MIN_CROP_SCALE,
    max_scale: float = 1.0,
    min_aspect: float = 0.5,
    max_aspect: float = 2.0,
    trials: int = 50,
    modes: Sequence[float | None] = CROP_MODES,
) -> CropWindow:
    """Draw the SSD min-IoU crop window for one image (SSD paper sec. 2.2).

    Draws a mode from ``modes`` uniformly; for a crop mode draws ``trials`` windows at once with
    width and height each uniform in ``[min_scale, max_scale]`` of the image's, aspect ratio
    ``w / h`` in ``[min_aspect, max_aspect]`` (pixels, as ssd.pytorch and torchvision), and
    takes the first that keeps at least one box (centre strictly inside, as ssd.pytorch and
    torchvision) with IoU >= the mode. When none qualifies the crop is the whole image, which is
    always among Caffe's candidates. Images with no boxes: an unconstrained crop is any window;
    a min-IoU mode cannot be met and gives the whole image (Caffe: negatives are never cropped;
    torchvision: the same, after spinning). Consumes the same amount of torch RNG every call.

    Args:
        boxes_xyxy_px: Tensor[N, 4], xyxy in pixels of the image, N may be 0.
        height, width: image size in pixels.

    Returns:
        The window, the constraint it satisfies and which boxes it keeps.
    """
    num_boxes = boxes_xyxy_px.shape[0]
    whole = CropWindow(0, 0, width, height, None, torch.ones(num_boxes, dtype=torch.bool))
    min_iou = modes[int(torch.randint(len(modes), ()))]
    if min_iou is None:
        return whole
    r = torch.rand(trials, 4, dtype=torch.float64)  # (T, 4): width scale, height scale, left, top
    crop_w = (width * (min_scale + (max_scale - min_scale) * r[:, 0])).long()  # (T,)
    crop_h = (height * (min_scale + (max_scale - min_scale) * r[:, 1])).long()
    left = ((width - crop_w) * r[:, 2]).long()
    top = ((height - crop_h) * r[:, 3]).long()
    aspect = crop_w / crop_h.clamp(min=1)
    ok = (crop_w >= 1) & (crop_h >= 1) & (aspect >= min_aspect) & (aspect <= max_aspect)  # (T,)
    windows = torch.stack((left, top, left + crop_w, top + crop_h), dim=1).to(boxes_xyxy_px.dtype)  # (T, 4)
    centres = (boxes_xyxy_px[:, :2] + boxes_xyxy_px[:, 2:]) * 0.5  # (N, 2)
    inside = (
        (windows[:, None, 0] < centres[None, :, 0])
        & (centres[None, :, 0] < windows[:, None, 2])
        & (windows[:, None, 1] < centres[None, :, 1])
        & (centres[None, :, 1] < windows[:, None, 3])
    )  # (T, N)
    if num_boxes > 0:
        ious = box_iou_xyxy(windows, boxes_xyxy_px)  # (T, N)
        ok &= (inside & (ious >= min_iou)).any(dim=1)
    elif min_iou > 0:
        return whole
    chosen = torch.nonzero(ok)
    if chosen.numel() == 0:
        return whole
    t = int(chosen[0, 0])
    x1, y1, x2, y2 = (int(v) for v in windows[t].tolist())
    return CropWindow(x1, y1, x2, y2, float(min_iou), inside[t])


def crop(
    image: Tensor, boxes_xyxy_px: Tensor, labels: Tensor, window: CropWindow
) -> tuple[Tensor, Tensor, Tensor]:
    """Cut ``window`` out of the image; keep its boxes (``window.keep``), clipped to it.

    Args:
        image: Tensor[C, H, W].
        boxes_xyxy_px: Tensor[N, 4], xyxy pixels of ``image``.
        labels: Tensor[N].

    Returns:
        ``(image Tensor[C, h, w], boxes_xyxy_px Tensor[K, 4] in the crop's pixels, labels
        Tensor[K])``. A kept box has its centre strictly inside the window, so after clipping it
        still spans that centre: positive area.
    """
    cropped = image[:, window.top : window.bottom, window.left : window.right]
    offset = boxes_xyxy_px.new_tensor([window.left, window.top, window.left, window.top])
    size = boxes_xyxy_px.new_tensor([window.right - window.left, window.bottom - window.top] * 2)
    boxes = torch.minimum((boxes_xyxy_px[window.keep] - offset).clamp(min=0), size)
    return cropped, boxes, labels[window.keep]


def _as_chw_uint8(image: ImageLike) -> Tensor:
    """``uint8[H, W, 3]`` RGB (numpy or torch) -> ``uint8`` Tensor[3, H, W] (a channels-last view)."""
    tensor = torch.from_numpy(np.ascontiguousarray(image)) if isinstance(image, np.ndarray) else image
    if tensor.dtype != torch.uint8 or tensor.dim() != 3 or tensor.shape[2] != 3:
        raise ValueError(f"expected a uint8 RGB image of shape (H, W, 3), got {tuple(tensor.shape)} {tensor.dtype}")
    # A view, not a copy: the uint8 resize reads it about 3x faster than a contiguous (3, H, W) copy
    # (the same values), and the copy itself cost as long again.
    return tensor.permute(2, 0, 1)  # (3, H, W)


def _prepare_targets(
    boxes_xyxy_px: np.ndarray | Tensor, labels: np.ndarray | Tensor, height: int, width: int, min_size: float
) -> tuple[tv_tensors.BoundingBoxes, Tensor]:
    """Clip boxes to the image and drop those under ``min_size`` pixels (with their labels)."""
    boxes = torch.as_tensor(boxes_xyxy_px, dtype=torch.float32).reshape(-1, 4)  # (N, 4)
    labels = torch.as_tensor(labels, dtype=torch.int64).reshape(-1)  # (N,)
    if boxes.shape[0] != labels.shape[0]:
        raise ValueError(f"{boxes.shape[0]} boxes but {labels.shape[0]} labels")
    boxes = tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(height, width))
    boxes, valid = F.sanitize_bounding_boxes(F.clamp_bounding_boxes(boxes), min_size=min_size, min_area=min_size**2)
    return boxes, labels[valid]


def resize_uint8(images: Tensor, size: int) -> Tensor:
    """The one resize used for training, evaluation, detection and export checks.

    Bilinear, ``antialias=False`` (what cv2.INTER_LINEAR does, and what SSD was trained with),
    to a square ``size x size`` without keeping the aspect ratio.

    Args:
        images: uint8 Tensor[..., 3, H, W].

    Returns:
        uint8 Tensor[..., 3, size, size], contiguous whatever the input's strides (a channels-last
        view resizes fastest).
    """
    return F.resize(images, [size, size], interpolation=v2.InterpolationMode.BILINEAR, antialias=False).contiguous()


def normalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 Tensor[..., 3, H, W] -> float32, ``(x / 255 - mean) / std`` per RGB channel."""
    return F.normalize(F.to_dtype(images, torch.float32, scale=True), mean=list(mean), std=list(std))


def to_model_input(
    images: Sequence[ImageLike] | ImageLike,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device | str | None = None,
) -> Tensor:
    """Images as read (RGB uint8, any sizes) -> the network's input batch.

    Args:
        images: a list of uint8[H_i, W_i, 3] RGB images (numpy or torch), or one uint8
            [B, H, W, 3] batch.
        size: network input side S.
        mean, std: the model's per-channel normalisation (RGB, for pixels scaled to [0, 1]).
        device: where to resize (the uint8 images are moved first: 4x less to copy than float).

    Returns:
        float32 Tensor[B, 3, S, S]; identical to :class:`EvalTransform` for each image.
    """
    batch = [_as_chw_uint8(image).to(device) for image in images]
    if not batch:
        return torch.empty(0, 3, size, size, device=device)
    return normalize(torch.stack([resize_uint8(image, size) for image in batch]), mean, std)


def _check_order(channel_order: str) -> str:
    if channel_order not in ("rgb", "bgr"):
        raise ValueError(f"channel order {channel_order!r}: expected rgb or bgr")
    return channel_order


def _in_order(chw: Tensor, channel_order: str) -> Tensor:
    """An RGB uint8 ``Tensor[3, S, S]`` in the network's channel order (BGR: flipped)."""
    return chw.flip(0) if channel_order == "bgr" else chw


class EvalTransform:
    """Evaluation / validation: resize + normalise only (no randomness).

    Args:
        size: network input side S.
        mean, std: per-channel normalisation for pixels scaled to [0, 1], in ``channel_order``.
        min_box_size: boxes narrower or shorter than this many pixels (after clipping to the image)
            are dropped with their labels.

    Attributes:
        source_side: pixels an image needs on each side (:func:`ssdcli.data.resolution.inference_side`);
            the dataset may hand over a large JPEG decoded reduced to that.
    """

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float], *, min_box_size: float = 1.0,
                 channel_order: str = "rgb"):
        self.size = size
        self.channel_order = _check_order(channel_order)
        self.source_side = inference_side(size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.min_box_size = min_box_size

    def __call__(
        self, image: ImageLike, boxes_xyxy_px: np.ndarray | Tensor, labels: np.ndarray | Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``(uint8[H, W, 3] RGB, boxes xyxy px [N, 4], labels [N])`` ->
        ``(float32 Tensor[3, S, S], boxes_xyxy_norm Tensor[M, 4] in [0, 1], labels Tensor[M])``."""
        chw = _as_chw_uint8(image)
        height, width = chw.shape[1:]
        boxes, labels = _prepare_targets(boxes_xyxy_px, labels, height, width, self.min_box_size)
        scale = torch.tensor([width, height, width, height], dtype=torch.float32)
        network = _in_order(resize_uint8(chw, self.size), self.channel_order)
        return normalize(network, self.mean, self.std), boxes.as_subclass(Tensor) / scale, labels


class TrainTransform:
    """The SSD training augmentation (module docstring), then resize + normalise.

    Args:
        size: network input side S.
        mean, std: per-channel normalisation for pixels scaled to [0, 1], in ``channel_order``.
        channel_order: ``rgb``, or ``bgr`` for networks that take BGR input (ssd.pytorch's, via
            ``ssd train --init``): the augmented RGB image is flipped before it is normalised.
        fill: RGB uint8 colour of the zoom-out canvas; default the mean colour ``round(255 * mean)``.
        photometric: apply the photometric distortion.
        zoom_out_p: probability of zooming out; ``max_zoom_out`` the largest canvas side factor.
        crop: apply the min-IoU random crop.
        flip_p: probability of a horizontal flip.
        min_box_size: boxes under this many pixels (input image or final crop) are dropped.

    Attributes:
        source_side: pixels the augmentation needs on the image's shorter side
            (:func:`ssdcli.data.resolution.training_side`): larger images are resized down to it
            first, and the dataset may decode a large JPEG reduced to it.
    """

    def __init__(
        self,
        size: int,
        mean: Sequence[float],
        std: Sequence[float],
        fill: Sequence[int] | None = None,
        *,
        photometric: bool = True,
        zoom_out_p: float = 0.5,
        max_zoom_out: float = 4.0,
        crop: bool = True,
        flip_p: float = 0.5,
        min_box_size: float = 1.0,
        channel_order: str = "rgb",
    ):
        self.size = size
        self.channel_order = _check_order(channel_order)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        rgb_mean = self.mean[::-1] if self.channel_order == "bgr" else self.mean
        self.fill = tuple(int(round(255 * m)) for m in rgb_mean) if fill is None else tuple(int(c) for c in fill)
        self.crop = crop
        self.source_side = training_side(size, crop)
        self.min_box_size = min_box_size
        self._photometric = v2.RandomPhotometricDistort(p=0.5) if photometric else None
        self._zoom_out = v2.RandomZoomOut(fill=self.fill, side_range=(1.0, max_zoom_out), p=zoom_out_p)
        self._flip = v2.RandomHorizontalFlip(p=flip_p)

    def augment(
        self, image: ImageLike, boxes_xyxy_px: np.ndarray | Tensor, labels: np.ndarray | Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Steps 1-4 (everything but resize + normalise), in pixels, on the image brought down to
        :attr:`source_side` first when it is much larger (:mod:`ssdcli.data.resolution`).

        Args:
            image: uint8[H, W, 3] RGB, numpy or torch.
            boxes_xyxy_px: [N, 4] xyxy pixels of ``image``, N may be 0.
            labels: [N] int.

        Returns:
            ``(uint8 Tensor[3, h, w], boxes_xyxy_px Tensor[M, 4] with 0 <= x1 < x2 <= w and
            0 <= y1 < y2 <= h, labels Tensor[M])``, M <= N, labels aligned with boxes.
        """
        boxes_px = torch.as_tensor(boxes_xyxy_px, dtype=torch.float32).reshape(-1, 4)  # (N, 4)
        chw, boxes_px = shrink_to_side(_as_chw_uint8(image).contiguous(), boxes_px, self.source_side)
        chw = tv_tensors.Image(chw)
        boxes, labels = _prepare_targets(boxes_px, labels, chw.shape[1], chw.shape[2], self.min_box_size)
        if self._photometric is not None:
            chw = self._photometric(chw)
        chw, boxes = self._zoom_out(chw, boxes)
        chw, boxes = chw.as_subclass(Tensor), boxes.as_subclass(Tensor)
        if self.crop:
            window = sample_iou_crop(boxes, chw.shape[1], chw.shape[2])
            chw, boxes, labels = crop(chw, boxes, labels, window)
        boxes = tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=tuple(chw.shape[1:]))
        chw, boxes = self._flip(tv_tensors.Image(chw), boxes)
        # A crop keeps a box only with positive area (it spans its centre), but clipping can leave
        # a sliver under min_box_size pixels: drop those with their labels.
        boxes, valid = F.sanitize_bounding_boxes(boxes, min_size=self.min_box_size, min_area=self.min_box_size**2)
        return chw.as_subclass(Tensor), boxes.as_subclass(Tensor), labels[valid]

    def __call__(
        self, image: ImageLike, boxes_xyxy_px: np.ndarray | Tensor, labels: np.ndarray | Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``(uint8[H, W, 3] RGB, boxes xyxy px [N, 4], labels [N])`` ->
        ``(float32 Tensor[3, S, S], boxes_xyxy_norm Tensor[M, 4] in [0, 1], labels Tensor[M])``."""
        chw, boxes, labels = self.augment(image, boxes_xyxy_px, labels)
        height, width = chw.shape[1:]
        scale = torch.tensor([width, height, width, height], dtype=torch.float32)
        network = _in_order(resize_uint8(chw, self.size), self.channel_order)
        return normalize(network, self.mean, self.std), boxes / scale, labels
