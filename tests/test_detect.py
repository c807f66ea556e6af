"""ssdcli.detect: the pipeline on `ssd data synth` images and a video made here, no shared data.

The model is an untrained SSDLite320 at half width: its class scores are about 1/5 everywhere,
so a low score threshold yields many boxes of every class to compare. Expected detections come
from eval's path (``predict_dataset``) or from calling the detector on frames decoded here.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from ssdcli.data.reader import load_dataset
from ssdcli.data.synth import make_synthetic_dataset
from ssdcli.data.transforms import normalize, resize_uint8
from ssdcli.detect import DetectEvents, DetectOptions, DetectPlan, plan_detection, run_detection
from ssdcli.errors import UserError
from ssdcli.inference import TorchDetector, predict_dataset
from ssdcli.models import build_model
from ssdcli.postprocess import PostprocessSettings

CLASSES = ["circle", "square", "star", "triangle"]  # ssd data synth's
SETTINGS = PostprocessSettings(score_threshold=0.05, nms_iou=0.45, top_k_candidates=400, max_detections=20)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("ssdlite320", num_classes=len(CLASSES), width_mult=0.5)


@pytest.fixture(scope="module")
def detector(model) -> TorchDetector:
    return TorchDetector(model, torch.device("cpu"), SETTINGS, class_names=CLASSES)


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    """6 synthetic VOC images (JPEGImages/000000.jpg ...) with their annotations."""
    root = tmp_path_factory.mktemp("synth") / "data"
    make_synthetic_dataset(root, num_images=6, seed=5)
    return root


def images_of(synth: Path) -> list[Path]:
    return sorted((synth / "JPEGImages").glob("*.jpg"))


class Recorder(DetectEvents):
    """Every event in order; raises KeyboardInterrupt (as Ctrl-C would) at result ``interrupt_at``."""

    def __init__(self, interrupt_at: int | None = None, on_each=None) -> None:
        self.calls: list[tuple] = []
        self.results = []
        self.interrupt_at = interrupt_at
        self.on_each = on_each

    def on_progress_start(self, description, total):
        self.calls.append(("start", description, total))

    def on_progress_advance(self, count):
        self.calls.append(("advance", count))

    def on_warning(self, message):
        self.calls.append(("warning", message))

    def on_result(self, result):
        self.results.append(result)
        if self.on_each is not None:
            self.on_each(result)
        if len(self.results) == self.interrupt_at:
            raise KeyboardInterrupt

    @property
    def warnings(self) -> list[str]:
        return [call[1] for call in self.calls if call[0] == "warning"]


def coco_key(d: dict):
    return d["image_id"], d["category_id"], -d["score"], d["bbox"]


def write_video(path: Path, frames: list[np.ndarray], fps: float = 8.0) -> list[np.ndarray]:
    """An mp4v video of ``frames`` (RGB, one size); returns the frames as OpenCV decodes them
    back, RGB: what the pipeline reads."""
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    assert writer.isOpened()
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    capture = cv2.VideoCapture(str(path))
    decoded = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        decoded.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    capture.release()
    return decoded


def test_images_give_evals_detections_in_both_json_files(synth, model, detector, tmp_path):
    dataset = load_dataset(synth, classes=CLASSES)
    expected = predict_dataset(model, dataset, torch.device("cpu"), SETTINGS, batch_size=4, workers=0)
    assert len(expected) > 50  # an untrained model: many low-score boxes to compare

    files = [str(r.image_path) for r in dataset.records]
    options = DetectOptions(json_file=tmp_path / "dets.json", coco_json=tmp_path / "out" / "coco.json",
                            batch_size=4, workers=0)
    events = Recorder()
    summary = run_detection(detector, files, options, events)
    assert (summary.images, summary.frames, summary.unreadable) == (len(files), 0, 0)
    # progress: one stretch of len(files) images, advanced batch by batch (4 + the rest)
    assert events.calls == [("start", "images", len(files)), ("advance", 4), ("advance", len(files) - 4)]
    assert summary.timings.images == len(files) and summary.seconds > 0

    coco = json.loads((tmp_path / "out" / "coco.json").read_text())
    assert sorted(coco, key=coco_key) == sorted(expected, key=coco_key)
    entries = json.loads((tmp_path / "dets.json").read_text())
    assert [e["file"] for e in entries] == files == [r.file for r in events.results]
    assert (summary.json_entries, summary.coco_entries) == (len(entries), len(coco))
    counted = sum(len(e["detections"]) for e in entries)
    assert counted == len(coco) == sum(summary.detections_per_class.values())
    for entry in entries:
        width, height = Image.open(entry["file"]).size
        assert (entry["width"], entry["height"]) == (width, height) and "frame" not in entry
        assert 0 < len(entry["detections"]) <= 20
        for d in entry["detections"]:
            x1, y1, x2, y2 = d["box"]
            assert 0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height
            assert d["label"] == CLASSES[d["class_id"] - 1] and d["score"] > 0.05
        # the --json boxes are the COCO ones in xyxy, same order: x2 - x1 = w, y2 - y1 = h
        mine = [d for d in coco if d["image_id"] == Path(entry["file"]).stem]
        assert [d["box"][2] - d["box"][0] for d in entry["detections"]] == pytest.approx(
            [d["bbox"][2] for d in mine], abs=0.02)
        assert [d["box"][3] - d["box"][1] for d in entry["detections"]] == pytest.approx(
            [d["bbox"][3] for d in mine], abs=0.02)
        assert [d["class_id"] for d in entry["detections"]] == [d["category_id"] for d in mine]
    # per class: detections and images holding at least one, counted from the json
    for label in range(1, len(CLASSES) + 1):
        assert summary.detections_per_class[label] == sum(d["category_id"] == label for d in coco)
        assert summary.images_per_class[label] == sum(
            any(d["class_id"] == label for d in e["detections"]) for e in entries)


def test_a_folder_keeps_its_sub_folders_under_output_and_renames_clashes(synth, detector, tmp_path):
    photos = tmp_path / "photos"
    jpgs = images_of(synth)
    (photos / "a" / "deep").mkdir(parents=True)
    (photos / "b").mkdir()
    shutil.copy(jpgs[0], photos / "a" / "deep" / "x.jpg")
    shutil.copy(jpgs[1], photos / "b" / "x.jpg")
    Image.open(jpgs[2]).save(photos / "b" / "y.ppm")  # cv2.imwrite-able? no: its copy becomes y.png
    (photos / "notes.txt").write_text("not an image: skipped silently")
    loose = tmp_path / "x.jpg"
    shutil.copy(jpgs[3], loose)

    out = tmp_path / "rendered"
    events = Recorder()
    summary = run_detection(detector, [photos, loose], DetectOptions(output=out, workers=0), events)
    assert summary.images == 4
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == ["a/deep/x.jpg", "b/x.jpg", "b/y.png", "x.jpg"]  # the folder's layout kept
    for source, copy in ((photos / "a" / "deep" / "x.jpg", out / "a" / "deep" / "x.jpg"),
                         (photos / "b" / "y.ppm", out / "b" / "y.png")):
        original = np.asarray(Image.open(source).convert("RGB"))
        drawn = cv2.cvtColor(cv2.imread(str(copy)), cv2.COLOR_BGR2RGB)
        assert drawn.shape == original.shape
        assert np.abs(drawn.astype(int) - original.astype(int)).max() > 100  # boxes drawn on it
    assert events.warnings == []

    # the loose x.jpg and photos/x.jpg (an image at the folder's top) would share out/x.jpg
    shutil.copy(jpgs[4], photos / "x.jpg")
    events = Recorder()
    run_detection(detector, [photos, loose], DetectOptions(output=out, workers=0), events)
    assert (out / "x.jpg").is_file() and (out / "x-2.jpg").is_file()
    assert events.warnings == [f"{loose}: {out / 'x.jpg'} is taken by another source; writing {out / 'x-2.jpg'}"]


def test_a_video_is_read_frame_by_frame_rendered_at_its_fps_and_written_per_frame(synth, detector, tmp_path):
    size = (224, 176)  # width, height: every synth image cut to one size
    frames = [np.asarray(Image.open(p).convert("RGB"))[: size[1], : size[0]] for p in images_of(synth)[:4]]
    clip = tmp_path / "clip.mp4"
    decoded = write_video(clip, frames, fps=8.0)
    assert len(decoded) == 4

    out, dets = tmp_path / "rendered", tmp_path / "dets.json"
    events = Recorder()
    options = DetectOptions(output=out, json_file=dets, coco_json=tmp_path / "coco.json", batch_size=3, workers=1)
    summary = run_detection(detector, [clip], options, events)
    assert (summary.images, summary.frames) == (0, 4)
    assert events.calls == [("start", str(clip), None), ("advance", 3), ("advance", 1)]

    # the same detections as the detector on the frames decoded here
    inputs = torch.stack([normalize(resize_uint8(torch.from_numpy(f).permute(2, 0, 1), 320),
                                    detector.mean, detector.std) for f in decoded])
    expected = detector.predict(inputs[:3], [size] * 3) + detector.predict(inputs[3:], [size])  # same batches
    entries = json.loads(dets.read_text())
    assert [e["frame"] for e in entries] == [0, 1, 2, 3]
    for entry, want in zip(entries, expected):
        assert entry["file"] == str(clip) and (entry["width"], entry["height"]) == size
        assert [d["score"] for d in entry["detections"]] == pytest.approx(want.scores.tolist(), abs=1e-5)
        assert [v for d in entry["detections"] for v in d["box"]] == pytest.approx(
            want.boxes_xyxy.flatten().tolist(), abs=0.01)
    coco = json.loads((tmp_path / "coco.json").read_text())
    assert {d["image_id"] for d in coco} == {f"clip_{k:06d}" for k in range(4)}

    capture = cv2.VideoCapture(str(out / "clip.mp4"))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 4 and capture.get(cv2.CAP_PROP_FPS) == pytest.approx(8.0)
    assert (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))) == size
    ok, first = capture.read()
    capture.release()
    assert ok and np.abs(cv2.cvtColor(first, cv2.COLOR_BGR2RGB).astype(int) - decoded[0]).mean() > 1  # boxes drawn


def test_the_class_filter_keeps_exactly_those_classes_of_the_full_run(synth, detector, tmp_path):
    files = [str(p) for p in images_of(synth)[:3]]
    run_detection(detector, files, DetectOptions(json_file=tmp_path / "all.json", workers=0))
    summary = run_detection(detector, files, DetectOptions(json_file=tmp_path / "some.json", workers=0,
                                                           classes=(" star", "circle ", "")))
    full = json.loads((tmp_path / "all.json").read_text())
    some = json.loads((tmp_path / "some.json").read_text())
    for entry_all, entry_some in zip(full, some, strict=True):
        wanted = [d for d in entry_all["detections"] if d["label"] in {"star", "circle"}]
        assert entry_some["detections"] == wanted  # same boxes, same order, nothing else
    assert set(summary.detections_per_class) <= {1, 3} and sum(summary.detections_per_class.values()) > 0

    with pytest.raises(UserError, match=r"--classes: dog not among the model's classes: circle, square, star, triangle"):
        run_detection(detector, files, DetectOptions(classes=("circle", "dog"), workers=0))
    with pytest.raises(UserError, match=r"--classes: \(empty\)"):
        run_detection(detector, files, DetectOptions(classes=(" ", ""), workers=0))


def test_ctrl_c_leaves_valid_json_holding_every_finished_result(synth, detector, tmp_path):
    files = [str(p) for p in images_of(synth)]
    dets, coco = tmp_path / "dets.json", tmp_path / "coco.json"
    run_detection(detector, files, DetectOptions(json_file=dets, coco_json=coco, batch_size=2, workers=0))
    full, full_coco = json.loads(dets.read_text()), json.loads(coco.read_text())

    out = tmp_path / "rendered"
    seen = []

    def check_streaming(result):
        # drawn and written as soon as its batch is done; the next batch not read yet; the old
        # json files stay in place until the run ends
        seen.append(sorted(p.name for p in out.iterdir()))
        assert json.loads(dets.read_text()) == full

    events = Recorder(interrupt_at=3, on_each=check_streaming)
    options = DetectOptions(json_file=dets, coco_json=coco, output=out, batch_size=2, workers=0)
    with pytest.raises(KeyboardInterrupt):
        run_detection(detector, files, options, events)
    names = [Path(f).name for f in files]
    assert seen == [names[:1], names[:2], names[:3]]
    assert json.loads(dets.read_text()) == full[:3]  # a valid list of the results before Ctrl-C
    assert json.loads(coco.read_text()) == [d for d in full_coco if d["image_id"] in {Path(f).stem for f in files[:3]}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["coco.json", "dets.json", "rendered"]  # no temp left


def test_unreadable_and_missing_sources_are_warnings_until_nothing_is_left(synth, detector, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    good = images_of(synth)[0].read_bytes()
    (folder / "good.jpg").write_bytes(good)
    (folder / "broken.jpg").write_bytes(good[:100])  # cut inside its header (cut later, it decodes as in OpenCV)
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    events = Recorder()
    summary = run_detection(detector, [folder, tmp_path / "gone.jpg", tmp_path / "bad.mp4"],
                            DetectOptions(json_file=tmp_path / "d.json", workers=0), events)
    assert (summary.images, summary.unreadable) == (1, 2)
    assert [Path(e["file"]).name for e in json.loads((tmp_path / "d.json").read_text())] == ["good.jpg"]
    assert events.warnings[0] == f"{tmp_path / 'gone.jpg'}: no such file or folder"
    assert "broken.jpg" in events.warnings[1] and events.warnings[1].endswith("; skipped")
    assert events.warnings[2].startswith(f"{tmp_path / 'bad.mp4'}: cannot open this video")

    with pytest.raises(UserError, match=r"^the only image or video could not be read \(see the warning above\)$"):
        run_detection(detector, [folder / "broken.jpg"], DetectOptions(json_file=tmp_path / "e.json", workers=0))
    with pytest.raises(UserError, match=r"^none of the 2 images and videos could be read \(see the warnings above\)$"):
        run_detection(detector, [folder / "broken.jpg", tmp_path / "bad.mp4"], DetectOptions(workers=0))
    assert json.loads((tmp_path / "e.json").read_text()) == []  # still a valid (empty) list
    with pytest.raises(UserError, match=r"^.*nope\.jpg: no such file or folder$"):
        run_detection(detector, [tmp_path / "nope.jpg"], DetectOptions(workers=0))
    with pytest.raises(UserError, match="give at least one SOURCE"):
        run_detection(detector, [], DetectOptions(workers=0))


def test_planning_refuses_to_overwrite_an_input_and_bad_options(synth, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(images_of(synth)[0], folder / "p.jpg")
    before = (folder / "p.jpg").read_bytes()
    with pytest.raises(UserError, match="would overwrite the input"):
        plan_detection([folder], DetectOptions(output=folder))
    assert (folder / "p.jpg").read_bytes() == before

    (folder / "notes.txt").write_text("named explicitly: a warning")
    sources = [str(folder / "p.jpg"), str(folder / "notes.txt"), str(folder / "gone.png")]
    plan = plan_detection(sources, DetectOptions(output=tmp_path / "o"))
    assert isinstance(plan, DetectPlan) and plan.image_targets == [tmp_path / "o" / "p.jpg"]
    assert plan.warnings == [f"{folder / 'gone.png'}: no such file or folder",
                             f"{folder / 'notes.txt'}: not an image or video file by its extension (.txt); skipped"]
    plan = plan_detection([folder], DetectOptions(output=tmp_path / "o", webcam=3))
    assert [v.name for v in plan.videos] == ["webcam:3"] and plan.video_targets == [tmp_path / "o" / "webcam3.mp4"]

    for changes in ({"batch_size": 0}, {"workers": -1}):
        with pytest.raises(UserError, match=r"--batch-size must be >= 1 and --workers >= 0"):
            DetectOptions(**changes)


def test_a_plan_names_the_batch_its_largest_forward_pass_has(synth, tmp_path):
    """What ``--backend auto`` times: one photo runs at batch 1 whatever --batch-size says."""
    files = images_of(synth)
    assert plan_detection(files[:1], DetectOptions()).forward_batch(8) == 1
    assert plan_detection(files[:3], DetectOptions()).forward_batch(8) == 3
    assert plan_detection(files[:3], DetectOptions()).forward_batch(2) == 2
    assert plan_detection([], DetectOptions(webcam=0)).forward_batch(8) == 1  # a webcam runs frame by frame
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"")  # planning opens nothing
    assert plan_detection([video], DetectOptions()).forward_batch(8) == 8


def test_a_plan_made_beforehand_is_run_without_reporting_its_warnings_again(synth, detector, tmp_path):
    options = DetectOptions(json_file=tmp_path / "d.json", workers=0)
    plan = plan_detection([images_of(synth)[0], tmp_path / "gone.jpg"], options)
    assert len(plan.warnings) == 1
    events = Recorder()
    summary = run_detection(detector, plan, options, events)
    assert summary.images == 1 and events.warnings == []


def test_a_run_with_no_detection_above_min_score_names_the_best_score_and_a_threshold(synth, model, tmp_path):
    files = images_of(synth)[:3]
    # The untrained model scores 1/5 everywhere; random head biases spread the scores per class.
    model = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for head in model.conf_heads:
            bias = [p for name, p in head.named_parameters() if name.endswith("bias")][-1]
            bias.copy_(torch.randn(bias.shape, generator=generator))
    # The expected best score comes from the post-processing itself: at threshold 0 every class
    # of every image keeps its best-scored box (NMS never drops the top box), so the best
    # detection score is the best class probability before any threshold.
    everything = TorchDetector(model, torch.device("cpu"), PostprocessSettings(score_threshold=0.0), class_names=CLASSES)
    full = run_detection(everything, files, DetectOptions(json_file=tmp_path / "all.json", workers=0))
    entries = json.loads((tmp_path / "all.json").read_text())
    best = max(d["score"] for e in entries for d in e["detections"])
    per_class = {name: max(d["score"] for e in entries for d in e["detections"] if d["label"] == name) for name in CLASSES}
    weakest = min(per_class, key=per_class.get)
    assert sum(full.detections_per_class.values()) > 0 and per_class[weakest] < best < 0.9

    strict = TorchDetector(model, torch.device("cpu"), PostprocessSettings(score_threshold=0.9), class_names=CLASSES)
    events = Recorder()
    summary = run_detection(strict, files, DetectOptions(workers=0), events)
    assert not summary.detections_per_class
    expected = f"no detection scored above 0.9 on 3 images; the best score was {best:.3f}: try --min-score "
    assert events.warnings == [events.warnings[0]] and events.warnings[0].startswith(expected)
    suggested = float(events.warnings[0].rsplit(" ", 1)[1])
    assert best - 0.05 <= suggested < best  # a round value just below: it would show the best box

    events = Recorder()
    run_detection(strict, files, DetectOptions(workers=0, classes=(weakest,)), events)  # only that class counts
    assert events.warnings[0].startswith(
        f"no detection scored above 0.9 on 3 images; the best score was {per_class[weakest]:.3f}")

    # video frames too; and a run with detections says nothing
    frames = [np.asarray(Image.open(p).convert("RGB"))[:176, :224] for p in files[:2]]
    write_video(tmp_path / "clip.mp4", frames)
    events = Recorder()
    run_detection(strict, [tmp_path / "clip.mp4"], DetectOptions(workers=0), events)
    assert events.warnings[0].startswith("no detection scored above 0.9 on 2 video frames; the best score was")
    events = Recorder()
    run_detection(everything, files, DetectOptions(workers=0), events)
    assert events.warnings == []
