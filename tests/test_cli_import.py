"""`ssd import` and `--weights torchvision:NAME` through the CLI: torchvision's SSD300 / SSDLite
(seeded, no weights downloaded) against ``model.eval()(images)`` via `ssd detect --json`, the
same through `ssd export` + the ONNX model, ssd.pytorch's layout against a forward pass written
in tests/test_pretrained_ssd_pytorch.py, and the bad inputs of `ssd import`."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from test_pretrained_parity import (
    MIN_SCORE,
    NUM_IMAGES,
    _batchnorm_statistics_from,
    _matched_share,
    _scale_class_head,
    _torchvision_input,
)
from test_pretrained_ssd_pytorch import MEANS, SsdPytorchSSD
from torchvision.models.detection import ssd300_vgg16, ssdlite320_mobilenet_v3_large
from torchvision.ops import nms
from typer.testing import CliRunner

from ssdcli.checkpoint import load_checkpoint, save_checkpoint
from ssdcli.cli.app import app
from ssdcli.codec import decode
from ssdcli.boxes import cxcywh_to_xyxy
from ssdcli.data.images import read_image_rgb
from ssdcli.pretrained.ssd_pytorch import ssd_pytorch_spec
from ssdcli.pretrained.torchvision_ssd import torchvision_ssd300_spec
from ssdcli.priors import generate_priors

runner = CliRunner()


def ssd(*args: str):
    return runner.invoke(app, [*args])


@pytest.fixture(scope="module")
def photo_files(shared_data):
    files = sorted((shared_data / "voc2007_sample" / "VOC2007" / "JPEGImages").glob("*.jpg"))[:NUM_IMAGES]
    assert len(files) == NUM_IMAGES
    return files


@pytest.fixture(scope="module")
def photos(photo_files):
    return [torch.from_numpy(read_image_rgb(f)).permute(2, 0, 1) for f in photo_files]


def _torchvision_detections(model, photos, ignored):
    """torchvision's own ``model.eval()(images)`` at ``MIN_SCORE``, "N/A" labels left out."""
    model.score_thresh = MIN_SCORE
    with torch.no_grad():
        outputs = model.eval()([p.float() / 255 for p in photos])
    ignored = torch.tensor(ignored, dtype=torch.int64)
    return [(o["boxes"][k], o["scores"][k], o["labels"][k]) for o in outputs for k in [~torch.isin(o["labels"], ignored)]]


def _cli_detections(files, weights, json_path, *extra):
    """`ssd detect --min-score 0.05 --json` of ``files`` -> [(boxes, scores, labels)] per file."""
    result = ssd("detect", *map(str, files), "--weights", str(weights), "--min-score", str(MIN_SCORE),
                 "--json", str(json_path), "--workers", "0", "--device", "cpu", *extra)
    assert result.exit_code == 0, result.output
    entries = {entry["file"]: entry["detections"] for entry in json.loads(json_path.read_text())}
    found = []
    for file in files:
        dets = next(v for k, v in entries.items() if k.endswith(file.name))
        found.append((
            torch.tensor([d["box"] for d in dets], dtype=torch.float32).reshape(-1, 4),
            torch.tensor([d["score"] for d in dets], dtype=torch.float32),
            torch.tensor([d["class_id"] for d in dets], dtype=torch.int64),
        ))
    return found


def _assert_match(ours, reference):
    share_ours, count_ours = _matched_share(ours, reference)
    share_theirs, count_theirs = _matched_share(reference, ours)
    assert count_theirs >= 10 * NUM_IMAGES  # enough detections for the share to mean something
    assert share_ours >= 0.99 and share_theirs >= 0.99, (share_ours, count_ours, share_theirs, count_theirs)


@pytest.fixture(scope="module")
def ssd300_import(tmp_path_factory, photos):
    torch.manual_seed(0)
    model = ssd300_vgg16(weights=None, weights_backbone=None).eval()
    _scale_class_head(model, 0.5)
    folder = tmp_path_factory.mktemp("ssd300")
    torch.save(model.state_dict(), folder / "ssd300.pth")
    result = ssd("import", str(folder / "ssd300.pth"), "--output", str(folder / "ssd300.pt"))
    assert result.exit_code == 0, result.output
    return model, folder / "ssd300.pt", result.output


@pytest.fixture(scope="module")
def ssdlite_import(tmp_path_factory, photos):
    torch.manual_seed(0)
    model = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None)
    _batchnorm_statistics_from(model, _torchvision_input(model, photos))
    _scale_class_head(model, 2.0)
    folder = tmp_path_factory.mktemp("ssdlite")
    torch.save(model.state_dict(), folder / "ssdlite.pth")
    result = ssd("import", str(folder / "ssdlite.pth"), "--output", str(folder / "ssdlite.pt"))
    assert result.exit_code == 0, result.output
    return model, folder / "ssdlite.pt", result.output


def test_import_writes_a_checkpoint_with_the_sources_conventions_and_says_so(ssd300_import):
    _, path, output = ssd300_import
    checkpoint = load_checkpoint(path)
    assert checkpoint["format_version"] == 2 and checkpoint["num_classes"] == 90
    assert (checkpoint["channel_order"], checkpoint["resize"]) == ("rgb", "float")
    assert checkpoint["postprocess"]["rule"] == "torchvision"
    assert len(checkpoint["ignored_labels"]) == 10 and checkpoint["category_ids"][:3] == [1, 2, 3]
    assert checkpoint["imported_from"] == {"source": str(path.with_suffix(".pth")), "format": "torchvision-ssd300"}
    assert checkpoint["priors"] == torchvision_ssd300_spec().to_dict()
    assert "torchvision-ssd300" in output and "80 classes (10 unused outputs ignored)" in output
    assert "default boxes: 8732" in output and "torchvision rule (clip before NMS)" in output
    assert "300x300 RGB" in output and "float resize" in output


@pytest.mark.slow
def test_ssd300_detect_matches_torchvision(ssd300_import, photo_files, photos, tmp_path):
    model, path, _ = ssd300_import
    ignored = load_checkpoint(path)["ignored_labels"]
    reference = _torchvision_detections(model, photos, ignored)
    ours = _cli_detections(photo_files, path, tmp_path / "dets.json", "--backend", "torch")
    assert not any(np.isin(labels.numpy(), ignored).any() for _, _, labels in ours)
    _assert_match(ours, reference)


@pytest.mark.slow
def test_ssdlite_detect_and_its_onnx_export_match_torchvision(ssdlite_import, photo_files, photos, tmp_path):
    pytest.importorskip("onnxruntime")
    model, path, _ = ssdlite_import
    ignored = load_checkpoint(path)["ignored_labels"]
    reference = _torchvision_detections(model, photos, ignored)
    ours = _cli_detections(photo_files, path, tmp_path / "dets.json", "--backend", "torch")
    _assert_match(ours, reference)
    # the same rule and preprocessing in the exported graph (NMS inside) and its metadata
    onnx_path = tmp_path / "ssdlite.onnx"
    result = ssd("export", "--weights", str(path), "--format", "onnx", "--output", str(onnx_path),
                 "--min-score", str(MIN_SCORE))
    assert result.exit_code == 0, result.output
    exported = _cli_detections(photo_files, onnx_path, tmp_path / "onnx.json")
    _assert_match(exported, reference)


@pytest.mark.slow
def test_ssd300_onnx_export_matches_torchvision(ssd300_import, photo_files, photos, tmp_path):
    pytest.importorskip("onnxruntime")
    model, path, _ = ssd300_import
    reference = _torchvision_detections(model, photos, load_checkpoint(path)["ignored_labels"])
    onnx_path = tmp_path / "ssd300.onnx"
    result = ssd("export", "--weights", str(path), "--format", "onnx", "--output", str(onnx_path),
                 "--min-score", str(MIN_SCORE))
    assert result.exit_code == 0, result.output
    _assert_match(_cli_detections(photo_files, onnx_path, tmp_path / "onnx.json"), reference)


# ------------------------------------------------------------------------------- ssd.pytorch


def _ssd_pytorch_reference(network, files, min_score):
    """ssd.pytorch's preprocessing (BGR, cv2.resize, minus the BGR means, no scaling) and forward,
    then Caffe's DetectionOutput: softmax, per class the boxes above ``min_score`` (best 400),
    NMS 0.45 on the decoded boxes, clipped, best 200 per image; pixels of the original image."""
    import cv2

    priors = generate_priors(ssd_pytorch_spec(21))
    results = []
    for file in files:
        bgr = np.ascontiguousarray(read_image_rgb(file)[:, :, ::-1])
        height, width = bgr.shape[:2]
        x = cv2.resize(bgr, (300, 300)).astype(np.float32) - np.array(MEANS, dtype=np.float32)
        with torch.no_grad():
            loc, conf = network(torch.from_numpy(x).permute(2, 0, 1)[None])
        scores = conf[0].softmax(-1)
        boxes = cxcywh_to_xyxy(decode(loc[0], priors, (0.1, 0.2)))
        found = []
        for c in range(1, 21):
            idx = torch.nonzero(scores[:, c] > min_score).flatten()
            idx = idx[scores[idx, c].argsort(descending=True)][:400]
            kept = idx[nms(boxes[idx], scores[idx, c], 0.45)]
            found += [(boxes[i].clamp(0, 1) * torch.tensor([width, height, width, height]), scores[i, c], c) for i in kept]
        found.sort(key=lambda d: -float(d[1]))
        found = found[:200]
        results.append((
            torch.stack([d[0] for d in found]).reshape(-1, 4) if found else torch.zeros(0, 4),
            torch.tensor([float(d[1]) for d in found]),
            torch.tensor([d[2] for d in found], dtype=torch.int64),
        ))
    return results


@pytest.mark.slow
def test_ssd_pytorch_import_and_detect_reproduce_its_forward(tmp_path, photo_files):
    torch.manual_seed(0)
    network = SsdPytorchSSD(num_classes=21).eval()
    with torch.no_grad():
        for conf in network.conf:
            conf.weight.mul_(4.0)
    torch.save(network.state_dict(), tmp_path / "ssd300_VOC.pth")
    files = photo_files[:3]
    result = ssd("import", str(tmp_path / "ssd300_VOC.pth"), "--channel-order", "bgr", "--output", str(tmp_path / "voc.pt"))
    assert result.exit_code == 0, result.output
    assert "ssd.pytorch" in result.output and "BGR" in result.output and "caffe rule (NMS, then clip)" in result.output
    ours = _cli_detections(files, tmp_path / "voc.pt", tmp_path / "dets.json", "--backend", "torch")
    reference = _ssd_pytorch_reference(network, files, MIN_SCORE)
    share_ours, count = _matched_share(ours, reference)
    share_theirs, _ = _matched_share(reference, ours)
    assert count >= 30 and share_ours >= 0.99 and share_theirs >= 0.99, (share_ours, share_theirs, count)


# ------------------------------------------------------------------------------- names and bad inputs


def test_weights_name_imports_on_first_use_into_the_cache(monkeypatch, tmp_path, photo_files):
    """A name whose file is in torch.hub's cache (here: a seeded SSDLite saved under the name's
    file) is imported once into <cache>/imports, with one note, and reused."""
    from ssdcli.pretrained.names import lookup

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("SSDCLI_CACHE_DIR", str(tmp_path / "ssdcli"))
    name = "torchvision:ssdlite320_mobilenet_v3_large"
    hub_file = lookup(name).cache_path
    hub_file.parent.mkdir(parents=True)
    torch.manual_seed(1)
    torch.save(ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None).state_dict(), hub_file)
    args = ("detect", str(photo_files[0]), "--weights", name, "--backend", "torch", "--workers", "0", "--device", "cpu",
            "--min-score", "0.01")
    first = ssd(*args)
    assert first.exit_code == 0, first.output
    cached = tmp_path / "ssdcli" / "imports" / "torchvision-ssdlite320_mobilenet_v3_large.pt"
    assert cached.is_file() and f"imported {name} into" in first.output and "imports" in first.output
    checkpoint = load_checkpoint(cached)
    assert checkpoint["imported_from"]["source"] == name
    # reused, and --coco-json writes the checkpoint's category ids (torchvision's are the labels
    # themselves, so they are moved here to tell the two apart)
    checkpoint["category_ids"] = [1000 + i for i in checkpoint["category_ids"]]
    save_checkpoint(cached, {k: v for k, v in checkpoint.items() if k not in ("format", "format_version")})
    second = ssd(*args, "--json", str(tmp_path / "d.json"), "--coco-json", str(tmp_path / "coco.json"))
    assert second.exit_code == 0 and "imported" not in second.output
    labels = [d["class_id"] for d in json.loads((tmp_path / "d.json").read_text())[0]["detections"]]
    coco = json.loads((tmp_path / "coco.json").read_text())
    assert len(coco) == len(labels) > 0
    assert [entry["category_id"] for entry in coco] == [1000 + label for label in labels]


def test_offline_name_names_the_url_and_the_path(monkeypatch, tmp_path):
    from ssdcli import downloads
    from ssdcli.pretrained.names import lookup

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(url, destination, on_progress=None):
        raise OSError("network is unreachable")

    monkeypatch.setattr(downloads, "download_file", offline)
    weights = lookup("torchvision:ssd300_vgg16")
    result = ssd("import", "torchvision:ssd300_vgg16", "--output", str(tmp_path / "m.pt"))
    assert result.exit_code == 2
    line = result.output.strip()
    assert line.startswith("error: offline") and weights.url in line and str(weights.cache_path) in line
    assert "\n" not in line and not (tmp_path / "m.pt").exists()


def _one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    text = result.output.strip()
    assert text.startswith("error: ") and "\n" not in text and "Traceback" not in text, text
    return text


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (lambda p: p.write_bytes(b""), "the file is empty"),
        (lambda p: torch.save({"vgg.0.weight": torch.zeros(2)}, p) or p.write_bytes(p.read_bytes()[:200]),
         "not a state-dict file"),
        (lambda p: p.write_bytes(pickle.dumps({"x": Evil()})), "refused"),
        (lambda p: torch.save({"classifier.0.weight": torch.zeros(2, 2)}, p), "ImageNet classifier"),
        (lambda p: torch.save({"vgg.0.weight": torch.zeros(2), "L2Norm.weight": torch.zeros(2)}, p),
         "ssd.pytorch"),
    ],
    ids=["empty", "truncated", "pickle", "other-layout", "incomplete"],
)
def test_bad_sources_are_one_line_errors(tmp_path, write, message, capfd):
    source = tmp_path / "weights.pth"
    write(source)
    text = _one_line_error(ssd("import", str(source), "--output", str(tmp_path / "m.pt")))
    assert message in text and str(source) in text
    assert "pwned" not in capfd.readouterr().out and not (tmp_path / "m.pt").exists()


def test_unknown_name_missing_file_existing_output_and_wrong_options(tmp_path, photo_files):
    assert "known names: torchvision:ssd300_vgg16" in _one_line_error(
        ssd("import", "torchvision:ssd1000", "--output", str(tmp_path / "m.pt")))
    assert "no such file" in _one_line_error(ssd("import", str(tmp_path / "none.pth"), "--output", str(tmp_path / "m.pt")))
    (tmp_path / "m.pt").write_text("keep me")
    assert "exists; choose another file or pass --force" in _one_line_error(
        ssd("import", "torchvision:ssd300_vgg16", "--output", str(tmp_path / "m.pt")))
    assert (tmp_path / "m.pt").read_text() == "keep me"
    assert "is a folder" in _one_line_error(ssd("import", "torchvision:ssd300_vgg16", "--output", str(tmp_path)))
    (tmp_path / "empty.txt").write_text("\n")
    assert "names no class" in _one_line_error(
        ssd("import", "x.pth", "--classes", str(tmp_path / "empty.txt"), "--output", str(tmp_path / "n.pt")))
    assert "unknown model name" in _one_line_error(
        ssd("detect", str(photo_files[0]), "--weights", "torchvision:nope", "--backend", "torch"))


def test_eval_scores_an_imported_coco_model_on_its_real_classes_with_the_jsons_ids(shared_data):
    """The unused "N/A" outputs are no class to score; COCO json ids follow the names."""
    from ssdcli.data.reader import load_dataset
    from ssdcli.evaluation.classes import align_classes
    from ssdcli.pretrained.labels import coco91_labels

    names, category_ids, ignored = coco91_labels()

    class Imported:
        class_names, ignored_labels = list(names), ignored

    dataset = load_dataset(shared_data / "coco128", check_images=False)
    detector, scored, warnings = align_classes(Imported(), dataset, "coco128", listed=False)
    assert scored.classes == [n for i, n in enumerate(names, 1) if i not in ignored] and len(scored.classes) == 80
    assert not any("__unused" in w for w in warnings)
    by_name = dict(zip(scored.classes, scored.category_ids))
    for name, cid in zip(dataset.classes, dataset.category_ids):
        assert by_name[name] == cid == category_ids[names.index(name)]
