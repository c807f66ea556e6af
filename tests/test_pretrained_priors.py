"""Default boxes of imported models: torchvision's DefaultBoxGenerator and ssd.pytorch's PriorBox."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import pytest
import torch
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator

from ssdcli.pretrained.ssd_pytorch import ssd_pytorch_spec
from ssdcli.pretrained.torchvision_ssd import torchvision_ssd300_spec, torchvision_ssdlite320_spec
from ssdcli.priors import PriorSpec, generate_priors, ssd300_spec, ssdlite320_spec


def _torchvision_boxes(generator: DefaultBoxGenerator, feature_maps, image_size: int) -> torch.Tensor:
    """DefaultBoxGenerator's boxes as its forward computes them: Tensor[P, 4] cxcywh normalised."""
    grid = [[f, f] for f in feature_maps]
    return generator._grid_default_boxes(grid, [image_size, image_size])


def test_torchvision_ssd300_priors_equal_default_box_generator() -> None:
    # torchvision ssd300_vgg16's generator, as its builder makes it (clip=True by default).
    generator = DefaultBoxGenerator(
        [[2], [2, 3], [2, 3], [2, 3], [2], [2]],
        scales=[0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05],
        steps=[8, 16, 32, 64, 100, 300],
    )
    spec = torchvision_ssd300_spec()
    theirs = _torchvision_boxes(generator, spec.feature_maps, 300)
    ours = generate_priors(spec)
    assert ours.shape == theirs.shape == (8732, 4)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    # The clip is torchvision's: last layer, scale 0.87: the ar=2 box is 0.87 * sqrt(2) = 1.23
    # wide, clamped to 1; its centre stays at 0.5, so the box still spans [0, 1].
    assert ours[-2].tolist() == pytest.approx([0.5, 0.5, 1.0, 0.87 / math.sqrt(2)], abs=1e-6)
    # Layer 2 (10x10, step 32) has centres past the image edge: (9 + 0.5) * 32 / 300 = 1.0133,
    # kept as they are (only the sizes are clamped).
    start = 38 * 38 * 4 + 19 * 19 * 6
    assert ours[start : start + 600, 0].max().item() == pytest.approx(9.5 * 32 / 300, abs=1e-6)


def test_torchvision_ssdlite320_priors_equal_default_box_generator() -> None:
    generator = DefaultBoxGenerator([[2, 3] for _ in range(6)], min_ratio=0.2, max_ratio=0.95)
    spec = torchvision_ssdlite320_spec()
    theirs = _torchvision_boxes(generator, spec.feature_maps, 320)
    ours = generate_priors(spec)
    assert ours.shape == theirs.shape == (3234, 4)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    # The difference from our (unclipped) ssdlite320 preset is exactly the clamped sizes.
    preset = generate_priors(ssdlite320_spec())
    differs = (preset != ours).any(dim=1)
    assert torch.equal(differs, (preset[:, 2:] > 1).any(dim=1))
    assert differs.sum().item() > 0


def _ssd_pytorch_prior_box(cfg: dict) -> torch.Tensor:
    """ssd.pytorch ``layers/functions/prior_box.py`` ``PriorBox.forward``, written out."""
    mean = []
    for k, f in enumerate(cfg["feature_maps"]):
        for i, j in itertools.product(range(f), repeat=2):
            f_k = cfg["min_dim"] / cfg["steps"][k]
            cx, cy = (j + 0.5) / f_k, (i + 0.5) / f_k
            s_k = cfg["min_sizes"][k] / cfg["min_dim"]
            mean += [cx, cy, s_k, s_k]
            s_k_prime = math.sqrt(s_k * (cfg["max_sizes"][k] / cfg["min_dim"]))
            mean += [cx, cy, s_k_prime, s_k_prime]
            for ar in cfg["aspect_ratios"][k]:
                mean += [cx, cy, s_k * math.sqrt(ar), s_k / math.sqrt(ar)]
                mean += [cx, cy, s_k / math.sqrt(ar), s_k * math.sqrt(ar)]
    return torch.tensor(mean).view(-1, 4).clamp(min=0, max=1)


# ssd.pytorch data/config.py
_LAYOUT = {
    "feature_maps": [38, 19, 10, 5, 3, 1],
    "min_dim": 300,
    "steps": [8, 16, 32, 64, 100, 300],
    "aspect_ratios": [[2], [2, 3], [2, 3], [2, 3], [2], [2]],
}
SSD_PYTORCH_VOC = {**_LAYOUT, "min_sizes": [30, 60, 111, 162, 213, 264], "max_sizes": [60, 111, 162, 213, 264, 315]}
SSD_PYTORCH_COCO = {**_LAYOUT, "min_sizes": [21, 45, 99, 153, 207, 261], "max_sizes": [45, 99, 153, 207, 261, 315]}


@pytest.mark.parametrize(("outputs", "cfg"), [(21, SSD_PYTORCH_VOC), (81, SSD_PYTORCH_COCO), (4, SSD_PYTORCH_COCO)])
def test_ssd_pytorch_priors_equal_its_prior_box(outputs: int, cfg: dict) -> None:
    # SSD.__init__: cfg = (coco, voc)[num_classes == 21]: every count but 21 gets the COCO boxes.
    ours = generate_priors(ssd_pytorch_spec(outputs))
    torch.testing.assert_close(ours, _ssd_pytorch_prior_box(cfg), rtol=0, atol=1e-6)
    # Centres past the edge (layer 2: 1.0133) are clamped to 1 here, unlike torchvision.
    assert ours[:, :2].max().item() == 1.0


def test_clip_modes_on_one_box() -> None:
    # One 1x1 map of a 100 px input, step 100: centre 0.5; min 80, max 125 -> squares 0.8 and
    # sqrt(0.8 * 1.25) = 1.0; ar 4: 0.8 * 2 = 1.6 wide, 0.4 high.
    from ssdcli.priors import LayerPriors

    layer = LayerPriors(feature_map=1, step=100, min_size=80, max_size=125, aspect_ratios=(4,))
    spec = PriorSpec(name="one", image_size=100, layers=(layer,), offset=0.5)
    wide = [0.5, 0.5, 1.6, 0.4]
    assert generate_priors(spec)[2].tolist() == pytest.approx(wide)
    assert generate_priors(replace(spec, clip="size"))[2].tolist() == pytest.approx([0.5, 0.5, 1.0, 0.4])
    assert generate_priors(replace(spec, clip="cxcywh"))[2].tolist() == pytest.approx([0.5, 0.5, 1.0, 0.4])
    assert generate_priors(replace(spec, clip=True))[2].tolist() == pytest.approx([0.5, 0.5, 1.0, 0.4])
    # Off-centre (offset 0.9 -> centre 0.9, 0.9): the corners clip to x [0.1, 1], y [0.7, 1]
    # (centre 0.55, 0.85; size 0.9 x 0.3); "size" keeps the centre (the box spans x 0.4 .. 1.4),
    # and so does "cxcywh" (0.9 is inside [0, 1]).
    shifted = replace(spec, offset=0.9)
    assert generate_priors(replace(shifted, clip=True))[2].tolist() == pytest.approx([0.55, 0.85, 0.9, 0.3])
    assert generate_priors(replace(shifted, clip="size"))[2].tolist() == pytest.approx([0.9, 0.9, 1.0, 0.4])
    assert generate_priors(replace(shifted, clip="cxcywh"))[2].tolist() == pytest.approx([0.9, 0.9, 1.0, 0.4])


def test_clip_modes_round_trip_and_old_checkpoints_read_the_same() -> None:
    base = ssd300_spec()
    assert base.clip is False and base.clip_mode == "none"
    assert base.to_dict()["clip"] is False  # presets store what they always stored
    for clip, mode in ((False, "none"), (True, "corners"), ("size", "size"), ("cxcywh", "cxcywh")):
        spec = replace(base, clip=clip)
        assert spec.clip_mode == mode
        assert PriorSpec.from_dict(spec.to_dict()) == spec
    # The mode names are accepted when read (a hand-written spec), and mean the booleans.
    assert PriorSpec.from_dict({**base.to_dict(), "clip": "corners"}).clip is True
    assert PriorSpec.from_dict({**base.to_dict(), "clip": "none"}).clip is False


def test_unknown_clip_modes_are_refused() -> None:
    with pytest.raises(ValueError, match="prior clip 'corner'"):
        replace(ssd300_spec(), clip="corner")
    with pytest.raises(ValueError, match="prior clip 1"):
        replace(ssd300_spec(), clip=1)
    with pytest.raises(ValueError, match="malformed prior settings"):
        PriorSpec.from_dict({**ssd300_spec().to_dict(), "clip": "sizes"})
