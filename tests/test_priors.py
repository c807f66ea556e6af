import math

import pytest
import torch

from ssdcli.priors import (
    PRESETS,
    PriorSpec,
    generate_priors,
    prior_layer_index,
    ssd300_coco_spec,
    ssd300_spec,
    ssd512_spec,
    ssdlite320_spec,
)


def caffe_prior_boxes(image_size, feature_maps, steps, min_sizes, max_sizes, aspect_ratios, offset=0.5):
    """An independent, loop-for-loop transcription of Caffe's prior_box_layer.cpp (flip=True,
    clip=False), normalised by the image size, in the layer's output order."""
    boxes = []
    for f, step, lo, hi, ars in zip(feature_maps, steps, min_sizes, max_sizes, aspect_ratios):
        for h in range(f):
            for w in range(f):
                cx = (w + offset) * step / image_size
                cy = (h + offset) * step / image_size
                boxes.append((cx, cy, lo / image_size, lo / image_size))
                big = math.sqrt(lo * hi) / image_size
                boxes.append((cx, cy, big, big))
                for ar in ars:
                    boxes.append((cx, cy, lo * math.sqrt(ar) / image_size, lo / math.sqrt(ar) / image_size))
                    boxes.append((cx, cy, lo / math.sqrt(ar) / image_size, lo * math.sqrt(ar) / image_size))
    return torch.tensor(boxes, dtype=torch.float64)


def test_counts():
    assert ssd300_spec().num_priors == 8732
    assert generate_priors(ssd300_spec()).shape == (8732, 4)
    assert ssd512_spec().num_priors == 24564
    assert generate_priors(ssd512_spec()).shape == (24564, 4)
    assert ssd300_coco_spec().num_priors == 8732
    # 38^2*4 + 19^2*6 + 10^2*6 + 5^2*6 + 3^2*4 + 1*4
    assert [layer.num_priors for layer in ssd300_spec().layers] == [5776, 2166, 600, 150, 36, 4]


def test_ssd300_sizes_are_the_caffe_ones():
    spec = ssd300_spec()
    assert [layer.min_size for layer in spec.layers] == [30, 60, 111, 162, 213, 264]
    assert [layer.max_size for layer in spec.layers] == [60, 111, 162, 213, 264, 315]
    assert [layer.step for layer in spec.layers] == [8, 16, 32, 64, 100, 300]
    assert spec.feature_maps == (38, 19, 10, 5, 3, 1)
    assert spec.variances == (0.1, 0.2)
    assert spec.offset == 0.5 and spec.clip is False


def test_coco_and_512_sizes():
    coco = ssd300_coco_spec()
    assert [layer.min_size for layer in coco.layers] == [21, 45, 99, 153, 207, 261]
    assert [layer.max_size for layer in coco.layers] == [45, 99, 153, 207, 261, 315]
    s512 = ssd512_spec()
    assert s512.feature_maps == (64, 32, 16, 8, 4, 2, 1)
    assert [layer.step for layer in s512.layers] == [8, 16, 32, 64, 128, 256, 512]
    # ssd_pascal512.py: 512 * [7, 15, 30, 45, 60, 75, 90] / 100 and max one step up
    assert [layer.min_size for layer in s512.layers] == pytest.approx([35.84, 76.8, 153.6, 230.4, 307.2, 384.0, 460.8])
    assert [layer.max_size for layer in s512.layers] == pytest.approx([76.8, 153.6, 230.4, 307.2, 384.0, 460.8, 537.6])


# Golden rows: the first box(es) of each SSD300 layer, worked out by hand.
S2, S3 = math.sqrt(2), math.sqrt(3)
GOLDEN_SSD300 = {
    # layer 0, location (0, 0): cx = cy = (0 + 0.5) * 8 / 300; min 30/300; sqrt(30*60)/300
    0: (0.5 * 8 / 300, 0.5 * 8 / 300, 30 / 300, 30 / 300),
    1: (0.5 * 8 / 300, 0.5 * 8 / 300, math.sqrt(30 * 60) / 300, math.sqrt(30 * 60) / 300),
    2: (0.5 * 8 / 300, 0.5 * 8 / 300, 30 * S2 / 300, 30 / S2 / 300),  # ar 2
    3: (0.5 * 8 / 300, 0.5 * 8 / 300, 30 / S2 / 300, 30 * S2 / 300),  # ar 1/2
    # location (0, 1): x moves first; cx = 1.5 * 8 / 300 = 0.04
    4: (1.5 * 8 / 300, 0.5 * 8 / 300, 30 / 300, 30 / 300),
    # location (1, 0) is the 39th location: index 38 * 4 = 152; cy = 1.5 * 8 / 300
    152: (0.5 * 8 / 300, 1.5 * 8 / 300, 30 / 300, 30 / 300),
    # layer 1 starts at 5776: cx = 0.5 * 16 / 300, min 60, then sqrt(60*111), ar 2, 1/2, 3, 1/3
    5776: (0.5 * 16 / 300, 0.5 * 16 / 300, 60 / 300, 60 / 300),
    5777: (0.5 * 16 / 300, 0.5 * 16 / 300, math.sqrt(60 * 111) / 300, math.sqrt(60 * 111) / 300),
    5780: (0.5 * 16 / 300, 0.5 * 16 / 300, 60 * S3 / 300, 60 / S3 / 300),
    5781: (0.5 * 16 / 300, 0.5 * 16 / 300, 60 / S3 / 300, 60 * S3 / 300),
    # layer 2 at 5776 + 2166 = 7942: step 32, min 111, max 162
    7942: (0.5 * 32 / 300, 0.5 * 32 / 300, 111 / 300, 111 / 300),
    # layer 3 at 7942 + 600 = 8542: step 64 -> cx = 32 / 300
    8542: (0.5 * 64 / 300, 0.5 * 64 / 300, 162 / 300, 162 / 300),
    # layer 4 at 8542 + 150 = 8692: step 100 -> cx = 1/6
    8692: (0.5 * 100 / 300, 0.5 * 100 / 300, 213 / 300, 213 / 300),
    # layer 5 at 8692 + 36 = 8728: one location at the centre
    8728: (0.5, 0.5, 264 / 300, 264 / 300),
    8729: (0.5, 0.5, math.sqrt(264 * 315) / 300, math.sqrt(264 * 315) / 300),
    8731: (0.5, 0.5, 264 / S2 / 300, 264 * S2 / 300),  # the last box: ar 1/2, 0.622 x 1.245
}


@pytest.mark.parametrize("index", sorted(GOLDEN_SSD300))
def test_ssd300_golden_rows(index):
    priors = generate_priors(ssd300_spec())
    assert priors[index].tolist() == pytest.approx(GOLDEN_SSD300[index], abs=1e-6)


def test_ssd512_first_rows():
    priors = generate_priors(ssd512_spec())
    # cx = 0.5 * 8 / 512; min 35.84 / 512 = 0.07; sqrt(35.84 * 76.8) / 512
    assert priors[0].tolist() == pytest.approx((4 / 512, 4 / 512, 0.07, 0.07), abs=1e-6)
    assert priors[1, 2].item() == pytest.approx(math.sqrt(35.84 * 76.8) / 512, abs=1e-6)
    # the last layer's single location holds the last 4 boxes, centred
    assert priors[-4].tolist() == pytest.approx((0.5, 0.5, 460.8 / 512, 460.8 / 512), abs=1e-6)


@pytest.mark.parametrize("name", ["ssd300", "ssd300_coco", "ssd512"])
def test_every_box_equals_the_caffe_formula(name):
    spec = PRESETS[name]()
    expected = caffe_prior_boxes(
        spec.image_size,
        spec.feature_maps,
        [layer.step for layer in spec.layers],
        [layer.min_size for layer in spec.layers],
        [layer.max_size for layer in spec.layers],
        [layer.aspect_ratios for layer in spec.layers],
    )
    assert torch.allclose(generate_priors(spec).double(), expected, atol=1e-6)


def test_clip_keeps_corners_inside():
    spec = ssd300_spec()
    clipped = generate_priors(PriorSpec(**{**spec.__dict__, "clip": True}))
    x1y1 = clipped[:, :2] - clipped[:, 2:] / 2
    x2y2 = clipped[:, :2] + clipped[:, 2:] / 2
    assert x1y1.min() >= -1e-6 and x2y2.max() <= 1 + 1e-6
    # unclipped, the big boxes of the last layer stick out of the image
    assert (generate_priors(spec)[:, 2] > 1).any()


def test_layer_index_and_dict_round_trip():
    spec = ssd300_spec()
    index = prior_layer_index(spec)
    assert index.shape == (8732,)
    assert index[5775].item() == 0 and index[5776].item() == 1 and index[-1].item() == 5
    assert PriorSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="malformed"):
        PriorSpec.from_dict({"name": "x"})


def test_with_feature_maps():
    spec = ssd300_spec().with_feature_maps([19, 10, 5, 3, 2, 1])
    assert spec.feature_maps == (19, 10, 5, 3, 2, 1)
    with pytest.raises(ValueError, match="6 prior layers"):
        ssd300_spec().with_feature_maps([1, 2])


def test_linear_scales_reproduce_the_ssdlite320_preset_and_torchvision_generator() -> None:
    from torchvision.models.detection.anchor_utils import DefaultBoxGenerator

    preset = ssdlite320_spec()
    # torchvision's own scales, 0.2 .. 0.95: the very preset (sizes equal up to float rounding).
    same = preset.with_linear_scales(0.2, 0.95)
    torch.testing.assert_close(generate_priors(same), generate_priors(preset), rtol=0, atol=1e-6)
    # 0.1 .. 0.95: s_k = 0.1 + 0.17 k, then 1.0 (sizes 32, 86.4, 140.8, 195.2, 249.6, 304, 320 px).
    smaller = preset.with_linear_scales(0.1, 0.95)
    assert [layer.min_size for layer in smaller.layers] == pytest.approx([32, 86.4, 140.8, 195.2, 249.6, 304])
    assert [layer.max_size for layer in smaller.layers] == pytest.approx([86.4, 140.8, 195.2, 249.6, 304, 320])
    generator = DefaultBoxGenerator([[2, 3]] * 6, scales=[0.1, 0.27, 0.44, 0.61, 0.78, 0.95, 1.0], clip=False)
    expected = generator._grid_default_boxes([[f, f] for f in (20, 10, 5, 3, 2, 1)], [320, 320])
    torch.testing.assert_close(generate_priors(smaller), expected.float(), rtol=0, atol=1e-6)
    assert smaller.num_priors == 3234 and smaller.feature_maps == preset.feature_maps


def test_linear_scales_keep_the_ssd300_layout() -> None:
    spec = ssd300_spec().with_linear_scales(0.2, 0.9)
    assert spec.num_priors == 8732
    # paper eq. 4 with m = 6: s_k = 0.2 + 0.14 k -> 60, 102, 144, 186, 228, 270 px at 300
    assert [layer.min_size for layer in spec.layers] == pytest.approx([60, 102, 144, 186, 228, 270])
    assert spec.layers[-1].max_size == pytest.approx(300)


@pytest.mark.parametrize("scales", [(0.0, 0.9), (0.5, 0.5), (0.6, 0.3), (0.2, 1.1)])
def test_linear_scales_refuse_impossible_ranges(scales) -> None:
    with pytest.raises(ValueError, match="0 < MIN < MAX <= 1"):
        ssd300_spec().with_linear_scales(*scales)
