import pytest
import torch
from torchvision.ops import nms

from ssdcli import postprocess as pp
from ssdcli import postprocess_paths as paths
from ssdcli.boxes import cxcywh_to_xyxy
from ssdcli.codec import decode
from ssdcli.errors import UserError
from ssdcli.postprocess import PostprocessSettings, postprocess, postprocess_flat
from ssdcli.priors import VARIANCES, generate_priors, ssd300_spec


def reference_postprocess(logits, deltas, priors, thr=0.01, iou=0.45, top_k=400, keep=200, clip_first=False):
    """Caffe DetectionOutput (NMS on the decoded boxes; ``clip_first``: torchvision's rule, clipped
    first), one image and one class at a time with torchvision.ops.nms."""
    results = []
    scores_all = torch.softmax(logits, -1)
    for b in range(logits.shape[0]):
        boxes_all = cxcywh_to_xyxy(decode(deltas[b], priors, VARIANCES))
        if clip_first:
            boxes_all = boxes_all.clamp(0, 1)
        dets = []
        for c in range(1, logits.shape[2]):
            s = scores_all[b, :, c]
            idx = torch.nonzero(s > thr).flatten()
            idx = idx[s[idx].argsort(descending=True)][:top_k]
            kept = nms(boxes_all[idx], s[idx], iou)
            dets += [(s[i].item(), c, i.item()) for i in idx[kept]]
        dets.sort(key=lambda d: -d[0])
        results.append(dets[:keep])
    return results


def realistic_outputs(seed, batch=2, classes=4):
    """Logits where a few priors are confident for a class and their neighbours less so."""
    priors = generate_priors(ssd300_spec())
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, priors.shape[0], classes + 1, generator=g) * 1.5
    logits[..., 0] += 3.0  # mostly background, as a trained model
    hot = torch.randint(0, priors.shape[0], (batch, 40), generator=g)
    for b in range(batch):
        logits[b, hot[b], torch.randint(1, classes + 1, (40,), generator=g)] += 8.0
    deltas = torch.randn(batch, priors.shape[0], 4, generator=g) * 0.5
    return logits, deltas, priors


@pytest.mark.parametrize("rule", pp.RULES)
@pytest.mark.parametrize("seed", [0, 1])
def test_keep_sets_equal_per_class_torchvision_nms(seed, rule):
    logits, deltas, priors = realistic_outputs(seed)
    got = postprocess(logits, deltas, priors, variances=VARIANCES, rule=rule)
    expected = reference_postprocess(logits, deltas, priors, clip_first=rule == "torchvision")
    for dets, ref in zip(got, expected):
        assert len(dets.scores) == len(ref)
        assert dets.scores.tolist() == pytest.approx([r[0] for r in ref], abs=1e-6)
        assert sorted(zip(dets.labels.tolist(), [round(s, 5) for s in dets.scores.tolist()])) == sorted(
            (r[1], round(r[0], 5)) for r in ref
        )


def test_top_k_and_max_detections_are_applied():
    logits, deltas, priors = realistic_outputs(2)
    got = postprocess(
        logits, deltas, priors, score_threshold=0.0, max_detections=50, top_k_candidates=30, variances=VARIANCES
    )
    expected = reference_postprocess(logits, deltas, priors, thr=0.0, keep=50, top_k=30)
    for dets, ref in zip(got, expected):
        assert len(dets.scores) == len(ref) == 50
        assert dets.scores.tolist() == pytest.approx([r[0] for r in ref], abs=1e-6)
        assert (dets.scores[:-1] >= dets.scores[1:]).all()


def test_nothing_above_threshold_gives_empty_detections():
    priors = generate_priors(ssd300_spec())
    logits = torch.zeros(3, priors.shape[0], 6)
    logits[..., 0] = 20.0  # certain background everywhere
    out = postprocess(logits, torch.zeros(3, priors.shape[0], 4), priors, image_sizes=[(640, 480)] * 3, variances=VARIANCES)
    assert len(out) == 3
    for dets in out:
        assert dets.boxes_xyxy.shape == (0, 4) and dets.scores.shape == (0,) and dets.labels.shape == (0,)


def test_boxes_are_scaled_to_each_image_and_stay_inside():
    priors = generate_priors(ssd300_spec())
    logits = torch.zeros(2, priors.shape[0], 3)
    logits[..., 0] = 10.0
    logits[:, 8728, 2] = 30.0  # the big centred box of the last layer, class 2
    out = postprocess(logits, torch.zeros(2, priors.shape[0], 4), priors, image_sizes=[(640, 480), (100, 200)], variances=VARIANCES)
    # prior 8728 is (0.5, 0.5, 0.88, 0.88): x from 0.06 to 0.94
    assert out[0].labels.tolist() == [2]
    assert out[0].boxes_xyxy[0].tolist() == pytest.approx([0.06 * 640, 0.06 * 480, 0.94 * 640, 0.94 * 480], abs=1e-3)
    assert out[1].boxes_xyxy[0].tolist() == pytest.approx([6.0, 12.0, 94.0, 188.0], abs=1e-3)
    # prior 8731 (0.622 x 1.245) sticks out vertically: clipped to the image
    logits[:, 8731, 1] = 40.0
    out = postprocess(logits, torch.zeros(2, priors.shape[0], 4), priors, image_sizes=[(640, 480), (100, 200)], variances=VARIANCES)
    assert out[0].boxes_xyxy[:, 3].max().item() <= 480 and out[0].boxes_xyxy.min().item() >= 0


def test_flat_form_groups_by_image():
    logits, deltas, priors = realistic_outputs(3, batch=3)
    flat = postprocess_flat(logits, deltas, priors, variances=VARIANCES)
    assert (flat.batch_index[:-1] <= flat.batch_index[1:]).all()
    assert flat.labels.min() >= 1 and flat.boxes_xyxy_norm.min() >= 0 and flat.boxes_xyxy_norm.max() <= 1


def _flat_both(logits, deltas, priors, **settings):
    """The eager and the traceable implementation on the same inputs."""
    args = (
        settings.get("score_threshold", 0.01),
        settings.get("nms_iou", 0.45),
        settings.get("top_k_candidates", 400),
        settings.get("max_detections", 200),
        VARIANCES,
        settings.get("rule", "caffe") == "torchvision",
    )
    return (
        paths.flat_eager(logits, deltas, priors, *args),
        paths.flat_traceable(logits, deltas, priors, *args),
    )


@pytest.mark.parametrize(
    "seed, settings",
    [
        (0, {}),
        (1, {"score_threshold": 0.0}),  # every (image, class) has all P candidates: top_k cap everywhere
        (2, {"score_threshold": 0.0, "top_k_candidates": 30, "max_detections": 50}),
        (3, {"score_threshold": 0.3, "max_detections": 5}),
        (4, {"nms_iou": 0.9, "max_detections": 1}),
        (5, {"rule": "torchvision"}),
        (6, {"rule": "torchvision", "score_threshold": 0.0, "top_k_candidates": 30}),
    ],
)
def test_eager_and_traceable_paths_give_identical_detections(seed, settings):
    logits, deltas, priors = realistic_outputs(seed, batch=3)
    eager, traced = _flat_both(logits, deltas, priors, **settings)
    for got, expected in zip(eager, traced):
        assert torch.equal(got, expected)


def test_prefix_grows_when_the_first_one_holds_too_few_survivors():
    """100 near-copies of one box outscore 50 boxes spread over the image: with max_detections 20
    the first stretch (2.5 x 20 = 50 candidates) holds one survivor, so the prefix has to grow until
    the spread boxes are reached; the answer must still be NMS over every candidate."""
    priors = generate_priors(ssd300_spec())
    logits = torch.zeros(1, priors.shape[0], 2)
    logits[..., 0] = 10.0
    same_place = torch.arange(100)  # first-layer priors at neighbouring locations (x step 8 / 300)
    spread = torch.arange(0, priors.shape[0], priors.shape[0] // 50)[:50]
    logits[0, same_place, 1] = torch.linspace(20.0, 19.0, 100)
    logits[0, spread, 1] = torch.linspace(15.0, 14.0, 50)
    deltas = torch.zeros(1, priors.shape[0], 4)
    # Every near-copy is decoded to the first prior's box: the deltas move centre 0 onto them.
    first = priors[0]
    deltas[0, same_place, :2] = (first[:2] - priors[same_place, :2]) / (0.1 * priors[same_place, 2:])
    deltas[0, same_place, 2:] = torch.log(first[2:] / priors[same_place, 2:]) / 0.2
    got = postprocess(logits, deltas, priors, max_detections=20, variances=VARIANCES)
    expected = reference_postprocess(logits, deltas, priors, keep=20)
    assert len(got[0].scores) == len(expected[0]) == 20
    assert got[0].scores.tolist() == pytest.approx([r[0] for r in expected[0]], abs=1e-6)
    eager, traced = _flat_both(logits, deltas, priors, max_detections=20)
    for a, b in zip(eager, traced):
        assert torch.equal(a, b)


def _crowded_then_spread(logits, deltas, priors, image, crowd, spread, score):
    """In ``image``: ``crowd`` near-copies of the first prior's box (class 1, scores from
    ``score``), then ``spread`` boxes over the whole image 5 logits lower."""
    same_place = torch.arange(crowd)  # first-layer priors at neighbouring locations
    logits[image, same_place, 1] = torch.linspace(score, score - 1.0, crowd)
    spread_at = torch.arange(0, priors.shape[0], priors.shape[0] // spread)[:spread]
    logits[image, spread_at, 1] = torch.linspace(score - 5.0, score - 6.0, spread)
    first = priors[0]
    deltas[image, same_place, :2] = (first[:2] - priors[same_place, :2]) / (0.1 * priors[same_place, 2:])
    deltas[image, same_place, 2:] = torch.log(first[2:] / priors[same_place, 2:]) / 0.2


def test_images_of_a_batch_need_different_numbers_of_rounds():
    """Image 0 needs several growth rounds (its first 50 candidates hold one survivor), image 1
    is answered by its first stretch, image 2 has no candidate, image 3 needs one more round; all
    must equal NMS over every candidate, and the traceable path."""
    priors = generate_priors(ssd300_spec())
    logits = torch.zeros(4, priors.shape[0], 3)
    logits[..., 0] = 10.0
    deltas = torch.zeros(4, priors.shape[0], 4)
    _crowded_then_spread(logits, deltas, priors, image=0, crowd=300, spread=50, score=20.0)
    _crowded_then_spread(logits, deltas, priors, image=1, crowd=5, spread=60, score=20.0)
    _crowded_then_spread(logits, deltas, priors, image=3, crowd=30, spread=40, score=20.0)
    logits[3, 1000:1030, 2] = torch.linspace(17.0, 16.5, 30)  # a second class below the crowd
    got = postprocess(logits, deltas, priors, max_detections=20, variances=VARIANCES)
    expected = reference_postprocess(logits, deltas, priors, keep=20)
    assert [len(d.scores) for d in got] == [len(e) for e in expected] == [20, 20, 0, 20]
    for dets, ref in zip(got, expected):
        assert dets.scores.tolist() == pytest.approx([r[0] for r in ref], abs=1e-6)
        assert dets.labels.tolist() == [r[1] for r in ref]
    eager, traced = _flat_both(logits, deltas, priors, max_detections=20)
    for a, b in zip(eager, traced):
        assert torch.equal(a, b)


def test_threads_do_not_change_the_detections():
    """The per-image NMS calls of a round share the CPU threads: one thread gives the same."""
    logits, deltas, priors = realistic_outputs(7, batch=4)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        pooled = postprocess_flat(logits, deltas, priors, variances=VARIANCES)
        torch.set_num_threads(1)
        alone = postprocess_flat(logits, deltas, priors, variances=VARIANCES)
    finally:
        torch.set_num_threads(before)
    for a, b in zip(pooled, alone):
        assert torch.equal(a, b)


def test_nms_helper_threads_belong_to_one_process_and_thread_count(monkeypatch):
    """A forked child (a DataLoader worker) must not reuse the parent's pool: its threads do not
    exist there, and work handed to them would wait forever. (A real fork cannot be tested here:
    libgomp itself hangs in a child whose parent ran OpenMP, which is why DataLoader workers run
    one thread.)"""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        first = paths.nms_helpers()
        assert first is not None and paths.nms_helpers() is first
        monkeypatch.setattr(paths.os, "getpid", lambda: -1)  # as seen from a child process
        child = paths.nms_helpers()
        assert child is not None and child is not first
        torch.set_num_threads(1)
        assert paths.nms_helpers() is None
    finally:
        torch.set_num_threads(before)


def test_traced_postprocess_takes_the_traceable_path(monkeypatch):
    """Inside torch.jit.trace the eager function must not run: its Python loop would be frozen
    into the graph for the traced batch."""
    logits, deltas, priors = realistic_outputs(5, batch=2)
    monkeypatch.setattr(paths, "flat_eager", lambda *a: pytest.fail("eager path traced"))

    def graph(cls_logits, box_deltas):
        return tuple(pp.postprocess_flat(cls_logits, box_deltas, priors, variances=VARIANCES))

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(graph, (logits, deltas), check_trace=False)
    assert traced(logits, deltas)[2].numel() > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_tensors_give_the_cpu_detections():
    logits, deltas, priors = realistic_outputs(6, batch=3)
    expected = postprocess_flat(
        logits, deltas, priors, score_threshold=0.0, top_k_candidates=30, max_detections=50, variances=VARIANCES
    )
    got = postprocess_flat(logits.cuda(), deltas.cuda(), priors.cuda(), score_threshold=0.0, top_k_candidates=30,
                           max_detections=50, variances=VARIANCES)
    for a, b in zip(got, expected):
        assert a.device.type == "cuda"
        torch.testing.assert_close(a.cpu(), b, rtol=0, atol=1e-5)


def test_settings_defaults_are_caffes_evaluation_ones_and_are_postprocess_arguments():
    settings = PostprocessSettings()
    # Caffe ssd_pascal.py DetectionOutput: confidence 0.01, nms 0.45, top_k 400, keep_top_k 200
    assert settings.to_dict() == {"score_threshold": 0.01, "nms_iou": 0.45, "top_k_candidates": 400,
                                  "max_detections": 200, "rule": "caffe"}
    logits, deltas, priors = realistic_outputs(3, batch=1)
    by_settings = postprocess(
        logits, deltas, priors, variances=VARIANCES, **PostprocessSettings(score_threshold=0.2).to_dict()
    )
    direct = postprocess(logits, deltas, priors, variances=VARIANCES, score_threshold=0.2)
    assert torch.equal(by_settings[0].scores, direct[0].scores)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"score_threshold": -0.01}, r"^--min-score -0.01: must be in \[0, 1\)$"),
        ({"score_threshold": 1.0}, r"^--min-score 1.0: must be in \[0, 1\)$"),
        ({"score_threshold": float("nan")}, r"^--min-score nan: must be in \[0, 1\)$"),
        ({"nms_iou": 0.0}, r"^--nms-iou 0.0: must be in \(0, 1\]$"),
        ({"nms_iou": 1.5}, r"^--nms-iou 1.5: must be in \(0, 1\]$"),
        ({"max_detections": 0}, r"^--top-k 0: must be at least 1$"),
        ({"top_k_candidates": 0}, r"^top_k_candidates 0: must be at least 1$"),
        ({"rule": "clip"}, r"^post-processing rule 'clip': expected one of caffe, torchvision$"),
    ],
)
def test_settings_out_of_range_are_refused_naming_the_flag(changes, message):
    with pytest.raises(UserError, match=message):
        PostprocessSettings(**changes)


def test_settings_at_the_edges_of_their_ranges_are_accepted():
    # [0, 1) for the score, (0, 1] for the IoU, >= 1 for both counts
    edge = PostprocessSettings(score_threshold=0.0, nms_iou=1.0, top_k_candidates=1, max_detections=1)
    assert edge.to_dict() == {
        "score_threshold": 0.0, "nms_iou": 1.0, "top_k_candidates": 1, "max_detections": 1, "rule": "caffe"
    }


# Two default boxes of one class, zero deltas (the decoded boxes are the priors): A sticks out of
# the image on the left, xyxy (-0.5, 0, 0.5, 0.5), score 0.9; B = (0, 0, 0.4, 0.5), score 0.8.
# Unclipped (Caffe): IoU = 0.2 / 0.5 = 0.4 <= 0.45, both kept, A clipped afterwards to (0, 0, 0.5, 0.5).
# Clipped first (torchvision): A = (0, 0, 0.5, 0.5), IoU = 0.2 / 0.25 = 0.8: B is suppressed.
TWO_RULES_PRIORS = torch.tensor([[0.0, 0.25, 1.0, 0.5], [0.2, 0.25, 0.4, 0.5]])
TWO_RULES_LOGITS = torch.log(torch.tensor([[[0.1, 0.9], [0.2, 0.8]]]))


@pytest.mark.parametrize("path", ["eager", "traceable"])
@pytest.mark.parametrize(
    "rule, boxes, scores",
    [
        ("caffe", [[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.4, 0.5]], [0.9, 0.8]),
        ("torchvision", [[0.0, 0.0, 0.5, 0.5]], [0.9]),
    ],
)
def test_caffe_runs_nms_on_unclipped_boxes_and_torchvision_clips_first(path, rule, boxes, scores):
    deltas = torch.zeros(1, 2, 4)
    run = paths.flat_eager if path == "eager" else paths.flat_traceable
    flat = run(TWO_RULES_LOGITS, deltas, TWO_RULES_PRIORS, 0.01, 0.45, 400, 200, VARIANCES, rule == "torchvision")
    torch.testing.assert_close(flat.boxes_xyxy_norm, torch.tensor(boxes), rtol=0, atol=1e-6)
    torch.testing.assert_close(flat.scores, torch.tensor(scores), rtol=0, atol=1e-6)
    assert flat.labels.tolist() == [1] * len(scores)


def test_the_default_rule_is_caffes():
    deltas = torch.zeros(1, 2, 4)
    (default,) = postprocess(TWO_RULES_LOGITS, deltas, TWO_RULES_PRIORS, variances=VARIANCES)
    assert len(default.scores) == 2 and PostprocessSettings().rule == "caffe"
    with pytest.raises(ValueError, match="rule 'clip'"):
        postprocess(TWO_RULES_LOGITS, deltas, TWO_RULES_PRIORS, variances=VARIANCES, rule="clip")
