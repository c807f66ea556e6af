"""Importing ssdcli changes nothing in the process; only the `ssd` entry point sets the OpenMP
spin limit, and the order of `import torch` / `import ssdcli` does not change any number."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from ssdcli.cli import process
from ssdcli.models import packed, winograd

SRC = Path(__file__).resolve().parents[1] / "src"
OPENMP_PREFIXES = ("GOMP_", "OMP_", "KMP_", "MKL_")


def _python(code: str, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    """Run ``code`` in a fresh interpreter with this checkout's ``src`` first on the path; its stdout."""
    switches = (winograd.EXACT_ENV, winograd.WINOGRAD_ENV, packed.UNPACKED_ENV)
    environ = {k: v for k, v in os.environ.items() if not k.startswith(OPENMP_PREFIXES) and k not in switches}
    environ["PYTHONPATH"] = os.pathsep.join([str(SRC), *filter(None, [os.environ.get("PYTHONPATH")])])
    environ.update(env or {})
    completed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=environ, capture_output=True, text=True, timeout=timeout
    )
    assert completed.returncode == 0, completed.stderr
    return completed.stdout


IMPORT_EVERY_MODULE = """
import importlib, pkgutil
import ssdcli
for info in pkgutil.walk_packages(ssdcli.__path__, "ssdcli."):
    if info.name != "ssdcli.__main__":
        importlib.import_module(info.name)
"""


def test_importing_every_module_leaves_the_environment_and_threads_unchanged() -> None:
    # The third-party libraries first: torch and cv2 add variables of their own on import.
    out = _python(
        "import os, json, cv2, numpy, PIL.Image, rich, torch, torchvision, typer\n"
        "before, threads = dict(os.environ), torch.get_num_threads()\n"
        + IMPORT_EVERY_MODULE
        + "print(json.dumps([dict(os.environ) == before, torch.get_num_threads() == threads]))"
    )
    assert json.loads(out) == [True, True]


def test_importing_ssdcli_before_torch_sets_no_openmp_variable() -> None:
    out = _python(
        "import os, json, sys\n"
        "before = dict(os.environ)\n"
        "import ssdcli\n"
        "same = dict(os.environ) == before and 'torch' not in sys.modules\n"
        + IMPORT_EVERY_MODULE
        + f"print(json.dumps([same, sorted(k for k in os.environ if k.startswith({OPENMP_PREFIXES!r}))]))"
    )
    assert json.loads(out) == [True, []]


_OUTPUTS = """
import contextlib
import torch
from ssdcli.models import build_model, winograd
torch.manual_seed(0)
model = build_model("ssd300", num_classes=3).eval()
images = torch.rand(1, 3, 300, 300, generator=torch.Generator().manual_seed(1))
switch = winograd.winograd_convolutions() if MODE == "winograd" else contextlib.nullcontext()
with torch.inference_mode(), switch:
    cls_logits, box_deltas = model(images)
torch.save({"cls_logits": cls_logits, "box_deltas": box_deltas}, OUT)
"""


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["default", "winograd"])
def test_import_order_gives_bit_identical_ssd300_outputs(tmp_path, mode) -> None:
    if mode == "winograd" and not winograd.nnpack_ready():
        pytest.skip("NNPACK does not run on this CPU")
    outputs = {}
    for order in ("import torch, ssdcli", "import ssdcli, torch"):
        out = tmp_path / f"{order.replace(', ', '_').replace(' ', '_')}.pt"
        _python(f"{order}\nMODE, OUT = {mode!r}, {str(out)!r}\n{_OUTPUTS}")
        outputs[order] = torch.load(out, weights_only=True)
    first, second = outputs.values()
    assert first["cls_logits"].shape == (1, 8732, 4)
    assert torch.equal(first["cls_logits"], second["cls_logits"])
    assert torch.equal(first["box_deltas"], second["box_deltas"])


def test_the_ssd_entry_point_sets_the_spin_limit_before_torch_loads() -> None:
    run_version = """
    import os, sys, json
    import ssdcli.__main__ as entry
    loaded_early = "torch" in sys.modules
    sys.argv = ["ssd", "--version"]
    try:
        entry.main()
    except SystemExit:
        pass
    print(json.dumps([loaded_early, os.environ.get("GOMP_SPINCOUNT")]))
    """
    out = _python(run_version)
    assert json.loads(out.splitlines()[-1]) == [False, process.OPENMP_SPIN_COUNT]
    # A user's own choice is kept.
    out = _python(run_version, env={"GOMP_SPINCOUNT": "500"})
    assert json.loads(out.splitlines()[-1]) == [False, "500"]


def test_limit_openmp_spin_only_before_torch_and_never_over_the_user(monkeypatch) -> None:
    environ: dict[str, str] = {}
    assert process.limit_openmp_spin(environ) is False  # torch is loaded in this process: too late
    assert environ == {}
    monkeypatch.delitem(sys.modules, "torch")
    assert process.limit_openmp_spin(environ) is True
    assert environ == {"GOMP_SPINCOUNT": process.OPENMP_SPIN_COUNT}
    for chosen in ({"GOMP_SPINCOUNT": "0"}, {"OMP_WAIT_POLICY": "active"}):
        kept = dict(chosen)
        assert process.limit_openmp_spin(kept) is False
        assert kept == chosen


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["train", "--help"], ["priors", "--help"], ["data", "check", "--help"]])
def test_version_and_help_do_not_import_torch(argv) -> None:
    """`ssd --version` and `--help` answer without loading torch (seconds on a cold cache)."""
    out = _python(f"""
        import sys
        sys.argv = ["ssd", *{argv!r}]
        from ssdcli.__main__ import main
        try:
            main()
        except SystemExit:
            pass
        print("TORCH", "torch" in sys.modules, "CV2", "cv2" in sys.modules)
    """)
    assert out.strip().splitlines()[-1] == "TORCH False CV2 False", out
