import math

import pytest
import torch

from ssdcli.boxes import cxcywh_to_xyxy
from ssdcli.codec import MAX_LOG_SIZE_DELTA, decode, decode_xyxy, encode
from ssdcli.priors import generate_priors, ssd300_spec

CAFFE = (0.1, 0.2)  # Caffe's prior_variance: centre, size


def test_encode_literal():
    prior = torch.tensor([[0.5, 0.5, 0.2, 0.4]])
    box = torch.tensor([[0.52, 0.46, 0.4, 0.2]])
    deltas = encode(box, prior, CAFFE)
    # dcx = (0.52 - 0.5) / (0.1 * 0.2) = 1.0; dcy = (0.46 - 0.5) / (0.1 * 0.4) = -1.0
    # dw = log(0.4 / 0.2) / 0.2 = 5 log 2; dh = log(0.2 / 0.4) / 0.2 = -5 log 2
    expected = torch.tensor([[1.0, -1.0, 5 * math.log(2), -5 * math.log(2)]])
    assert torch.allclose(deltas, expected, atol=1e-5)


def test_decode_inverts_encode_on_real_priors():
    priors = generate_priors(ssd300_spec())
    g = torch.Generator().manual_seed(0)
    boxes = torch.cat([torch.rand(2, priors.shape[0], 2, generator=g), 0.01 + torch.rand(2, priors.shape[0], 2, generator=g)], dim=-1)
    round_trip = decode(encode(boxes, priors, CAFFE), priors, CAFFE)
    assert torch.allclose(round_trip, boxes, atol=1e-5, rtol=1e-5)
    deltas = torch.randn(2, priors.shape[0], 4, generator=g)
    assert torch.allclose(encode(decode(deltas, priors, CAFFE), priors, CAFFE), deltas, atol=1e-4)


def test_zero_deltas_decode_to_the_prior():
    priors = generate_priors(ssd300_spec())
    assert torch.allclose(decode(torch.zeros_like(priors), priors, CAFFE), priors)


def test_custom_variances():
    prior = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    box = torch.tensor([[0.6, 0.5, 0.2, 0.2]])
    # dcx = 0.1 / (0.2 * 0.2) = 2.5 with a centre variance of 0.2
    assert encode(box, prior, variances=(0.2, 0.5))[0, 0].item() == pytest.approx(2.5)


def test_decode_of_huge_size_delta_stays_finite():
    prior = torch.tensor([[0.5, 0.5, 0.1, 0.1]])
    out = decode(torch.tensor([[0.0, 0.0, 1e4, 1e4]]), prior, CAFFE)
    assert torch.isfinite(out).all()
    assert out[0, 2].item() == pytest.approx(0.1 * math.exp(MAX_LOG_SIZE_DELTA), rel=1e-5)


def test_literal_decode_xyxy():
    prior = torch.tensor([[0.5, 0.5, 0.2, 0.4]])
    # the deltas of test_encode_literal: the box (0.52, 0.46, 0.4, 0.2) as corners
    deltas = torch.tensor([[1.0, -1.0, 5 * math.log(2), -5 * math.log(2)]])
    expected = torch.tensor([[0.32, 0.36, 0.72, 0.56]])
    assert torch.allclose(decode_xyxy(deltas, prior, CAFFE), expected, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_decode_xyxy_is_bit_for_bit_the_corners_of_decode(dtype):
    priors = generate_priors(ssd300_spec()).to(dtype)
    g = torch.Generator().manual_seed(1)
    deltas = torch.randn(3, priors.shape[0], 4, generator=g, dtype=dtype) * 4.0
    deltas[0, :10, 2:] = 1e4  # past the size clamp
    deltas[1, :10] = 0.0
    assert torch.equal(decode_xyxy(deltas, priors, CAFFE), cxcywh_to_xyxy(decode(deltas, priors, CAFFE)))
    # the post-processing form: one row per candidate, its own default box
    picked = torch.randint(0, priors.shape[0], (500,), generator=g)
    assert torch.equal(
        decode_xyxy(deltas[2, picked], priors[picked], (0.2, 0.5)),
        cxcywh_to_xyxy(decode(deltas[2, picked], priors[picked], (0.2, 0.5))),
    )
