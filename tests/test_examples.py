"""The scripts in examples/ run as documented."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from test_evaluation import cartucho_to_voc

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_detections_from_txt_equals_the_conversion_the_metric_tests_use(shared_data, tmp_path):
    sample = shared_data / "cartucho_map_sample"
    _, expected, names = cartucho_to_voc(sample, tmp_path / "voc")
    (tmp_path / "classes.txt").write_text("\n".join(names) + "\n")
    output = tmp_path / "dets.json"
    completed = subprocess.run(
        [sys.executable, str(EXAMPLES / "detections_from_txt.py"), str(sample / "input" / "detection-results"),
         "--classes", str(tmp_path / "classes.txt"), "--output", str(output)],
        capture_output=True, text=True, check=True,
    )
    got = json.loads(output.read_text())
    known = [d for d in expected if isinstance(d["category_id"], int)]
    assert len(got) == len(known) and f"skipped {len(expected) - len(known)}" in completed.stdout
    for g, e in zip(got, known):
        assert g["image_id"] == e["image_id"] and g["category_id"] == e["category_id"]
        assert g["bbox"] == e["bbox"] and g["score"] == e["score"]


def test_demo_script_has_its_settings_filled_in():
    text = (EXAMPLES / "demo.sh").read_text()
    assert "DEMO_" not in text
    assert "ssd train" in text and "ssd eval" in text and "ssd detect" in text and "ssd priors" in text
