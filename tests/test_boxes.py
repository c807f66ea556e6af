import pytest
import torch
from torchvision.ops import box_convert, box_iou

from ssdcli.boxes import (
    batched_box_iou_xyxy,
    box_iou_xyxy,
    cxcywh_to_xyxy,
    xywh_to_xyxy,
    xyxy_to_cxcywh,
    xyxy_to_xywh,
)


def test_conversions_literal():
    xyxy = torch.tensor([[10.0, 20.0, 50.0, 80.0]])
    # centre (10+50)/2 = 30, (20+80)/2 = 50; size 40 x 60
    assert xyxy_to_cxcywh(xyxy).tolist() == [[30.0, 50.0, 40.0, 60.0]]
    assert xyxy_to_xywh(xyxy).tolist() == [[10.0, 20.0, 40.0, 60.0]]
    assert cxcywh_to_xyxy(torch.tensor([[30.0, 50.0, 40.0, 60.0]])).tolist() == xyxy.tolist()
    assert xywh_to_xyxy(torch.tensor([[10.0, 20.0, 40.0, 60.0]])).tolist() == xyxy.tolist()


def test_conversions_match_torchvision_and_round_trip():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(100, 2, generator=g)
    boxes = torch.cat([xy, xy + torch.rand(100, 2, generator=g)], dim=1)
    assert torch.allclose(xyxy_to_cxcywh(boxes), box_convert(boxes, "xyxy", "cxcywh"))
    assert torch.allclose(xyxy_to_xywh(boxes), box_convert(boxes, "xyxy", "xywh"))
    assert torch.allclose(cxcywh_to_xyxy(xyxy_to_cxcywh(boxes)), boxes, atol=1e-6)
    assert torch.allclose(xywh_to_xyxy(xyxy_to_xywh(boxes)), boxes, atol=1e-6)
    # leading dimensions are kept
    assert xyxy_to_cxcywh(boxes.view(4, 25, 4)).shape == (4, 25, 4)


def test_iou_literal_and_empty():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [5.0, 5.0, 6.0, 6.0], [0.0, 0.0, 2.0, 2.0]])
    # overlap 1x1 = 1, union 4 + 4 - 1 = 7
    assert torch.allclose(box_iou_xyxy(a, b), torch.tensor([[1 / 7, 0.0, 1.0]]))
    assert box_iou_xyxy(a, b[:0]).shape == (1, 0)
    assert box_iou_xyxy(a[:0], b).shape == (0, 3)


def test_batched_iou_matches_torchvision():
    g = torch.Generator().manual_seed(1)
    xy = torch.rand(3, 7, 2, generator=g)
    boxes1 = torch.cat([xy, xy + torch.rand(3, 7, 2, generator=g)], dim=-1)
    xy2 = torch.rand(11, 2, generator=g)
    boxes2 = torch.cat([xy2, xy2 + torch.rand(11, 2, generator=g)], dim=-1)
    batched = batched_box_iou_xyxy(boxes1, boxes2)
    assert batched.shape == (3, 7, 11)
    for b in range(3):
        assert torch.allclose(batched[b], box_iou(boxes1[b], boxes2), atol=1e-6)


def test_batched_iou_zero_area_padding_is_zero_not_nan():
    pad = torch.zeros(1, 2, 4)  # two padding boxes of zero size at the origin
    priors = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]])
    iou = batched_box_iou_xyxy(pad, priors)
    assert torch.equal(iou, torch.zeros(1, 2, 2))


@pytest.mark.parametrize("shape", [(0, 4), (5, 0, 4)])
def test_conversions_on_empty(shape):
    empty = torch.zeros(shape)
    assert xyxy_to_cxcywh(empty).shape == shape
    assert cxcywh_to_xyxy(empty).shape == shape
