"""The bad-input corpus of issue 19 through the `ssd` app (Typer's CliRunner), each input built
in tmp: rich markup in paths, class names and help texts; output paths that are folders, files
or on a full disk. Every command must answer with the SPEC exit code and one clear line, never
a traceback or an "internal error"."""

from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path

import pytest
import torch
from rich.text import Text
from typer.main import get_command
from typer.testing import CliRunner

from ssdcli.checkpoint import save_checkpoint
from ssdcli.cli.app import app
from ssdcli.data.synth import make_synthetic_dataset
from ssdcli.models import build_model, model_settings

runner = CliRunner()
# Rich markup that crashed ("[/]": a closing tag with nothing to close) or vanished ("[bold]" is
# taken for a style) when printed unescaped; "tri[angle" has an unmatched bracket.
ODD_CLASSES = ["[/]", "[bold]sq", "star", "tri[angle"]  # sorted: the VOC reader's order for them
RENAMED = {"circle": "[/]", "square": "[bold]sq", "triangle": "tri[angle"}


def ssd(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def table_rows(text: str) -> list[list[str]]:
    """The cells of every row of the rich tables in ``text``."""
    return [[cell.strip() for cell in line.split("│")[1:-1]] for line in text.splitlines() if "│" in line]


def one_error_line(result, code: int) -> str:
    """The single stderr line of a failed command, after checking its exit code."""
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == code, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output and "internal error" not in result.output
    return lines[0]


def write_checkpoint(path: Path, class_names: list[str], **overrides) -> Path:
    """A random SSDLite320 at quarter width (fast on a CPU) with ``class_names``."""
    torch.manual_seed(0)
    model = build_model("ssdlite320", num_classes=len(class_names), width_mult=0.25)
    settings = model_settings(model)
    payload = {
        "model": model.state_dict(), "arch": settings["arch"], "num_classes": len(class_names),
        "options": settings["options"], "class_names": class_names, "image_size": settings["image_size"],
        "mean": settings["mean"], "std": settings["std"], "priors": settings["prior_spec"],
    }
    save_checkpoint(path, {**payload, **overrides})
    return path


@pytest.fixture(scope="module")
def odd_data(tmp_path_factory) -> Path:
    """A VOC folder inside "odd[" / "]data [bold]" whose classes are ODD_CLASSES."""
    root = tmp_path_factory.mktemp("markup") / "odd[/]data [bold]"
    make_synthetic_dataset(root, num_images=4, seed=1)  # all four classes
    for xml in (root / "Annotations").glob("*.xml"):
        text = xml.read_text()
        for old, new in RENAMED.items():
            text = text.replace(f"<name>{old}</name>", f"<name>{new}</name>")
        xml.write_text(text)
    return root


@pytest.fixture(scope="module")
def odd_weights(tmp_path_factory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("odd_ckpt") / "[bold]best.pt", ODD_CLASSES)


# --------------------------------------------------------------------------------------------
# Item 8: rich markup in user text
# --------------------------------------------------------------------------------------------


def test_data_check_prints_markup_in_the_folder_and_class_names_as_it_is(odd_data, tmp_path):
    report = tmp_path / "j[/]" / "[bold]r.json"
    result = ssd("data", "check", odd_data, "--json", report)
    assert result.exit_code == 0, result.output
    assert f"VOC dataset {odd_data}: 4 images" in result.stdout
    assert [row[1] for row in table_rows(result.stdout) if row and row[0] in "1234"] == ODD_CLASSES
    assert f"wrote {report}" in result.stderr
    assert json.loads(report.read_text())["classes"] == ODD_CLASSES


def test_priors_data_table_keeps_markup_in_the_path_and_class_names(odd_data):
    result = ssd("priors", "--data", odd_data)
    assert result.exit_code == 0, result.output
    assert str(odd_data) in result.stdout.replace("\n", "")
    assert [row[0] for row in table_rows(result.stdout) if row and row[0] in ODD_CLASSES] == ODD_CLASSES


def test_detect_and_eval_tables_keep_markup_in_class_names(odd_data, odd_weights, tmp_path):
    result = ssd("detect", odd_data / "JPEGImages", "--weights", odd_weights, "--min-score", "0.01",
                 "--workers", "0", "--json", tmp_path / "d[/].json")
    assert result.exit_code == 0, result.output
    found = [row[0] for row in table_rows(result.stdout) if row and row[0] in ODD_CLASSES]
    assert found and found == sorted(found, key=ODD_CLASSES.index)
    labels = {d["label"] for e in json.loads((tmp_path / "d[/].json").read_text()) for d in e["detections"]}
    assert labels <= set(ODD_CLASSES) and labels == set(found)

    result = ssd("eval", "--weights", odd_weights, "--data", odd_data, "--workers", "0", "--metric", "voc07",
                 "--json", tmp_path / "m[/].json")
    assert result.exit_code == 0, result.output
    assert [row[0] for row in table_rows(result.stdout) if row and row[0] in ODD_CLASSES] == ODD_CLASSES
    assert f"wrote {tmp_path / 'm[/].json'}" in result.stderr
    assert list(json.loads((tmp_path / "m[/].json").read_text())["per_class"]) == ODD_CLASSES


def test_export_keeps_markup_in_class_names_and_the_output_path(odd_weights, tmp_path):
    from ssdcli.export import OnnxDetector

    output = tmp_path / "e[/]" / "[bold]m.onnx"
    result = ssd("export", "--weights", odd_weights, "--output", output, "--no-postprocess")
    assert result.exit_code == 0, result.output
    assert f"wrote {output}" in result.stderr.replace("\n", "")
    assert OnnxDetector(output).class_names == ODD_CLASSES
    assert "onnx vs PyTorch, 2 runs at batch size 1 (" in result.stdout  # was "batch sizes 1, 1"


def _commands():
    """Every (name, click command) of the app, groups included."""
    stack = [("ssd", get_command(app))]
    while stack:
        name, command = stack.pop()
        yield name, command
        stack += [(f"{name} {sub}", c) for sub, c in getattr(command, "commands", {}).items()]


STYLE_TAG = re.compile(r"\[/?(bold|green|red|yellow)?\]")


def test_no_help_text_loses_bracketed_text_to_rich_markup():
    # Typer renders help in rich markup mode: an unescaped "[default: ...]" or "[x, y, w, h]"
    # was taken for a style tag and vanished ("Base learning rate ."). The text rich shows must
    # be the source text minus the deliberate style tags, with "\[" shown as "[".
    checked = 0
    for name, command in _commands():
        texts = [command.help or "", command.epilog or ""] + [getattr(p, "help", None) or "" for p in command.params]
        for text in texts:
            expected = STYLE_TAG.sub("", text).replace("\\[", "[")
            assert Text.from_markup(text).plain == expected, (name, text)
            checked += 1
    assert checked > 60  # every command's help, epilog and options were seen

    wide = {"COLUMNS": "300"}  # one line per option, so the text can be searched
    lr_help = "Base learning rate (default: 0.001 x batch-size/32 for ssd300/ssd512, 0.05 x batch-size/16 for ssdlite320)"
    assert lr_help in runner.invoke(app, ["train", "--help"], env=wide).stdout
    assert '"bbox": [x, y, w, h]' in runner.invoke(app, ["eval", "--help"], env=wide).stdout


# --------------------------------------------------------------------------------------------
# Item 12: output paths that are folders or files, read-only folders, full disks
# --------------------------------------------------------------------------------------------


@pytest.fixture()
def places(tmp_path, monkeypatch) -> Path:
    """The working folder, holding ``afile`` (a file) and ``adir`` (a folder)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("a file")
    (tmp_path / "adir").mkdir()
    return tmp_path


FOLDER_AS_FILE = "is a folder; give a file name"
FILE_AS_FOLDER = "is a file, not a folder; give a folder to write into"
FILE_IN_PATH = "afile is a file, not a folder; choose another path"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["data", "check", "{data}", "--json", "adir"], f"--json adir: {FOLDER_AS_FILE}"),
        (["data", "check", "{data}", "--json", "afile/r.json"], f"--json afile/r.json: {FILE_IN_PATH}"),
        (["priors", "--output", "adir"], f"--output adir: {FOLDER_AS_FILE}"),
        (["priors", "--data", "{data}", "--output", "afile/p.txt"], f"--output afile/p.txt: {FILE_IN_PATH}"),
        (["priors", "--plot", "adir"], f"--plot adir: {FOLDER_AS_FILE}"),
        (["eval", "--weights", "{weights}", "--data", "{data}", "--json", "adir"], f"--json adir: {FOLDER_AS_FILE}"),
        (["eval", "--weights", "{weights}", "--data", "{data}", "--plot-dir", "afile"], f"--plot-dir afile: {FILE_AS_FOLDER}"),
        (["eval", "--weights", "{weights}", "--data", "{data}", "--save-detections", "adir"],
         f"--save-detections adir: {FOLDER_AS_FILE}"),
        (["eval", "--detections", "adir", "--data", "{data}"],
         "--detections adir: is a folder; give the COCO results json (`ssd detect --coco-json`)"),
        (["detect", "{data}", "--weights", "{weights}", "--json", "adir"], f"--json adir: {FOLDER_AS_FILE}"),
        (["detect", "{data}", "--weights", "{weights}", "--coco-json", "afile/c.json"], f"--coco-json afile/c.json: {FILE_IN_PATH}"),
        (["detect", "{data}", "--weights", "{weights}", "--output", "afile"], f"--output afile: {FILE_AS_FOLDER}"),
        (["export", "--weights", "{weights}", "--output", "adir"], f"--output adir: {FOLDER_AS_FILE}"),
        (["export", "--weights", "{weights}", "--output", "afile/m.onnx"], f"--output afile/m.onnx: {FILE_IN_PATH}"),
    ],
)
def test_an_output_path_that_cannot_be_written_is_one_line_before_any_work(places, odd_data, odd_weights, args, message):
    filled = [a.format(data=odd_data, weights=odd_weights) for a in args]
    assert one_error_line(ssd(*filled), 2) == f"error: {message}"
    assert sorted(p.name for p in places.iterdir()) == ["adir", "afile"] and not any((places / "adir").iterdir())


DISK_FULL = "no space left on the device (disk full or quota reached); free some space or write elsewhere, and run again"


def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_eval_json_on_a_full_disk_exits_1_saying_so(places, odd_data, odd_weights, monkeypatch):
    monkeypatch.setattr(os, "fsync", disk_full)  # the last step of an atomic write
    result = ssd("eval", "--weights", odd_weights, "--data", odd_data, "--workers", "0", "--metric", "voc07",
                 "--json", "m.json")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1] == f"error: m.json: {DISK_FULL}"
    assert "internal error" not in result.output and not (places / "m.json").exists()


def test_a_read_only_file_system_at_write_time_is_one_line_exit_2(places, odd_data, odd_weights, monkeypatch):
    def read_only(source, target):
        raise OSError(errno.EROFS, "Read-only file system", source, None, target)  # as os.replace raises it

    monkeypatch.setattr(os, "replace", read_only)
    result = ssd("eval", "--weights", odd_weights, "--data", odd_data, "--workers", "0", "--metric", "voc07",
                 "--json", "m.json")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1] == "error: m.json: read-only file system; choose another path"


def test_detect_json_on_a_full_disk_keeps_the_earlier_file_valid(places, odd_data, odd_weights, monkeypatch):
    from ssdcli import detect_results as detect_module
    from ssdcli.files import JsonListWriter

    class FillsUp(JsonListWriter):
        """The second entry is half written when the disk fills up."""

        def add(self, entry):
            if self.count == 1:
                real = self._file
                self._file = type("Full", (), {
                    "write": lambda _, text: (real.write(text[: len(text) // 2]), disk_full()),
                    "__getattr__": lambda _, name: getattr(real, name),
                })()
            super().add(entry)

    monkeypatch.setattr(detect_module, "JsonListWriter", FillsUp)
    (places / "d.json").write_text('[{"earlier": true}]\n')
    result = ssd("detect", odd_data / "JPEGImages", "--weights", odd_weights, "--workers", "0", "--batch-size", "1",
                 "--json", "d.json")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1] == f"error: d.json: {DISK_FULL}"
    assert json.loads((places / "d.json").read_text()) == [{"earlier": True}]
    assert sorted(p.name for p in places.iterdir()) == ["adir", "afile", "d.json"]  # no temp file left


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_on_a_full_disk_exits_1_saying_so_and_leaves_nothing(places, odd_weights, monkeypatch, fmt):
    if fmt == "onnx":
        import onnx

        monkeypatch.setattr(onnx, "save", disk_full)
    else:  # torch.jit.save to a path would abort the process on a full disk; it now writes bytes
        monkeypatch.setattr(Path, "write_bytes", disk_full)
    result = ssd("export", "--weights", odd_weights, "--format", fmt, "--output", "adir/m.out", "--no-postprocess")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1] == f"error: adir/m.out: {DISK_FULL}"
    assert list((places / "adir").iterdir()) == []


def test_torchs_short_write_reaching_the_cli_is_reported_as_a_full_disk():
    from ssdcli.cli.common import error_boundary

    @error_boundary
    def save() -> None:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    probe = typer_app(save)
    result = runner.invoke(probe, [])
    assert result.exit_code == 1 and result.stderr.strip() == f"error: {DISK_FULL}"


def typer_app(command):
    import typer

    probe = typer.Typer()
    probe.command()(command)
    return probe


# --------------------------------------------------------------------------------------------
# Item 13: checkpoints and exported models that are well formed but unusable
# --------------------------------------------------------------------------------------------


def _edited_checkpoint(source: Path, target: Path, edit) -> Path:
    """``source`` with ``edit(payload)`` applied, written without save_checkpoint's checks."""
    payload = torch.load(source, weights_only=True)
    payload["model"] = {k: v.clone() for k, v in payload["model"].items()}
    edit(payload)
    torch.save(payload, target)
    return target


def _nan_weight(payload: dict) -> None:
    payload["model"]["conf_heads.0.1.weight"].view(-1)[0] = float("nan")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_nan_weight, "the weight 'conf_heads.0.1.weight' holds NaN or inf values (the training run diverged); "
                      "use an earlier checkpoint"),
        (lambda p: p.update(std=[0.229, 0.0, 0.225]),
         "'std' is [0.229, 0.0, 0.225]: inputs are divided by it, so every value must be positive"),
    ],
)
@pytest.mark.parametrize("command", ["detect", "eval", "export"])
def test_nan_weights_or_a_zero_std_are_refused_by_every_command(odd_data, odd_weights, tmp_path, edit, message, command):
    bad = _edited_checkpoint(odd_weights, tmp_path / "bad.pt", edit)
    args = {
        "detect": ["detect", odd_data / "JPEGImages", "--weights", bad],
        "eval": ["eval", "--weights", bad, "--data", odd_data],
        "export": ["export", "--weights", bad, "--output", tmp_path / "m.onnx"],
    }[command]
    assert one_error_line(ssd(*args), 2) == f"error: {bad}: unusable ssdcli checkpoint: {message}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pt"]


def test_weights_of_another_network_are_one_line_naming_the_file(odd_data, odd_weights, tmp_path):
    def more_classes(payload: dict) -> None:
        payload["num_classes"] = 5
        payload["class_names"] = [*ODD_CLASSES, "extra"]

    bad = _edited_checkpoint(odd_weights, tmp_path / "bad.pt", more_classes)
    line = one_error_line(ssd("detect", odd_data / "JPEGImages", "--weights", bad), 2)
    assert line.startswith(f"error: {bad}: does not hold a usable ssdlite320 network with 5 classes: "
                           "weight names or shapes do not match: ")
    assert "of another shape (first 'conf_heads.0.1.weight': (" in line and "missing" not in line


@pytest.fixture(scope="module")
def raw_onnx(odd_weights, tmp_path_factory) -> Path:
    from ssdcli.export import ExportOptions, export_checkpoint

    output = tmp_path_factory.mktemp("onnx") / "raw.onnx"
    assert export_checkpoint(odd_weights, output, ExportOptions(postprocess=False)).passed
    return output


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("image_size", "300", "its input is [1, 3, 320, 320] but its ssdcli metadata says [N, 3, 300, 300]; "
                              "the file was edited or its metadata mixed up: export it again with `ssd export`"),
        ("std", "[0.229, 0.0, 0.225]", "unusable ssdcli metadata: 'std' is [0.229, 0.0, 0.225]: inputs are "
                                       "divided by it, so every value must be positive"),
    ],
)
def test_an_onnx_model_whose_metadata_disagrees_with_its_graph_is_one_line(odd_data, raw_onnx, tmp_path, key, value, message):
    import onnx

    model = onnx.load(str(raw_onnx))
    (entry,) = [p for p in model.metadata_props if p.key == key]
    entry.value = value
    edited = tmp_path / "edited.onnx"
    onnx.save(model, str(edited))
    for args in (["detect", odd_data / "JPEGImages", "--weights", edited, "--workers", "0"],
                 ["eval", "--weights", edited, "--data", odd_data, "--workers", "0"]):
        assert one_error_line(ssd(*args), 2) == f"error: {edited}: {message}"


# --------------------------------------------------------------------------------------------
# Item 15: a model scored on data of other classes, --classes subsets, crowded images, wording
# --------------------------------------------------------------------------------------------


def _eval(weights: Path, data: Path, *flags):
    # --backend torch: auto would time the runtimes and say so (notes that depend on the CPU)
    return ssd("eval", "--weights", weights, "--data", data, "--workers", "0", "--metric", "voc07",
               "--backend", "torch", *flags)


def test_eval_of_a_model_sharing_no_class_with_the_data_is_an_error_naming_both_lists(odd_data, tmp_path):
    weights = write_checkpoint(tmp_path / "pets.pt", ["cat", "dog"])
    assert one_error_line(_eval(weights, odd_data), 2) == (
        f"error: {odd_data}: the model's classes (cat, dog) and this dataset's ([/], [bold]sq, star, tri[angle) "
        "have none in common, so nothing can be scored; evaluate on data annotated with the model's class names"
    )


def test_eval_of_a_partial_overlap_warns_with_the_missing_classes_and_scores_the_shared_ones(odd_data, odd_weights, tmp_path):
    full = _eval(odd_weights, odd_data, "--json", tmp_path / "full.json")
    assert full.exit_code == 0, full.output
    # the same network, two of its four classes renamed: "[bold]sq" and "tri[angle" are unknown to it
    partial = write_checkpoint(tmp_path / "partial.pt", ["[/]", "dog", "star", "pig"])
    result = _eval(partial, odd_data, "--json", tmp_path / "partial.json")
    assert result.exit_code == 0, result.output
    objects = {name: int(n) for name, n in zip(ODD_CLASSES, json_counts(odd_data))}
    left_out = objects["[bold]sq"] + objects["tri[angle"]
    assert result.stderr.strip().splitlines() == [
        f"warning: {odd_data}: no objects of the model's 2 classes dog, pig (no AP for them)",
        f"warning: {odd_data}: {left_out} objects of 2 classes the model does not know ([bold]sq, tri[angle) "
        "left out of the scores",
        f"wrote {tmp_path / 'partial.json'}",
    ]
    rows = [row for row in table_rows(result.stdout) if row and row[0] in ("[/]", "dog", "star", "pig")]
    assert [(row[0], row[1]) for row in rows] == [("[/]", str(objects["[/]"])), ("dog", "0"), ("star", str(objects["star"])), ("pig", "0")]
    scores = json.loads((tmp_path / "partial.json").read_text())["per_class"]
    reference = json.loads((tmp_path / "full.json").read_text())["per_class"]
    for shared in ("[/]", "star"):  # same weights, same detections, same ground truth: same AP
        assert scores[shared]["voc07_ap"] == reference[shared]["voc07_ap"]


def json_counts(data: Path) -> list[int]:
    """Objects per class of ``data`` as `ssd data check --json` counts them (the independent count)."""
    report = ssd("data", "check", data, "--json", "-")
    payload = json.loads(report.stdout)
    return [payload["boxes_per_class"][name] for name in payload["classes"]]


def test_eval_with_a_subset_of_the_models_classes_scores_that_subset(odd_data, odd_weights, tmp_path):
    full = _eval(odd_weights, odd_data, "--json", tmp_path / "full.json")
    subset = tmp_path / "subset.txt"
    subset.write_text("star\n[/]\n")  # another order than the model's
    result = _eval(odd_weights, odd_data, "--classes", subset, "--json", tmp_path / "subset.json")
    assert full.exit_code == 0 and result.exit_code == 0, result.output  # was: "category_id 3 is not a class"
    assert "error" not in result.stderr
    scores = json.loads((tmp_path / "subset.json").read_text())["per_class"]
    reference = json.loads((tmp_path / "full.json").read_text())["per_class"]
    assert list(scores) == ["star", "[/]"]
    for name in scores:
        assert scores[name]["voc07_ap"] == reference[name]["voc07_ap"]

    subset.write_text("star\ndog\n")
    assert one_error_line(_eval(odd_weights, odd_data, "--classes", subset), 2) == (
        "error: --classes: dog not among the model's classes: [/], [bold]sq, star, tri[angle"
    )


def test_an_image_with_more_boxes_than_the_cap_is_skipped_with_an_error(tmp_path):
    from ssdcli.data.records import MAX_BOXES_PER_IMAGE

    root = tmp_path / "crowded"
    make_synthetic_dataset(root, num_images=2, seed=1)
    xml = sorted((root / "Annotations").glob("*.xml"))[0]
    text = xml.read_text()
    one = text[text.index("<object>"): text.index("</object>") + len("</object>")]
    copies = MAX_BOXES_PER_IMAGE + 1 - (text.count("<object>") - 1)  # one box over the cap in all
    xml.write_text(text.replace(one, one * copies, 1))  # 3 M boxes asked matching for ~270 GB
    result = ssd("data", "check", root, "--json", tmp_path / "r.json", "--no-decode")
    assert result.exit_code == 1
    problems = json.loads((tmp_path / "r.json").read_text())["problems"]
    assert {"file": str(root / "JPEGImages" / f"{xml.stem}.jpg"), "severity": "error",
            "message": f"{MAX_BOXES_PER_IMAGE + 1:,} boxes on one image, more than the {MAX_BOXES_PER_IMAGE:,} "
                       "ssdcli handles (its IoU matrices would not fit in memory); image skipped"} in problems
    assert "1 image (" in result.stdout and "NOT READY: 1 error to fix" in result.stdout  # was "1 images", "1 errors"


def test_counts_of_one_read_in_the_singular(tmp_path):
    root = tmp_path / "one"
    make_synthetic_dataset(root, num_images=2, seed=1)
    first, second = sorted((root / "Annotations").glob("*.xml"))
    second.unlink()
    (root / "JPEGImages" / f"{second.stem}.jpg").unlink()
    for split in (root / "ImageSets" / "Main").glob("*.txt"):
        split.unlink()
    first.write_text(re.sub(r"<name>\w+</name>", "<name>circle</name>", first.read_text()))  # one class
    boxes = first.read_text().count("<object>")
    result = ssd("data", "check", root)
    assert result.exit_code == 0, result.output
    assert f": 1 image (0 without boxes: negatives, background only), {boxes} boxes (0 difficult, 0 crowd), 1 class\n" in result.stdout
    assert "OK: training can proceed (0 warnings)." in result.stdout  # was "1 images", "1 classes"
