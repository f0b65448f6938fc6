"""The prepared GPU check (gpu_check/, docs/scaling.md) on the CPU: the parts that run on the GPU machine
pass here too, and the wheelhouse's installer picks and unpacks wheels as it will there."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# laffi's dependencies that gpu_check/wheelhouse/ leaves out because the check's path does not import them
NOT_IN_WHEELHOUSE = ("openai", "flask", "waitress", "sqlalchemy", "matplotlib", "gguf", "datasets")


def test_gpu_check_passes_on_the_cpu(tmp_path):
    summary = tmp_path / "gpu_check.json"
    # in a process of its own: the check sets LAFFI_CACHE and the offline variables for itself. About 12 s on
    # 2 busy cores (the check, then accelerate's launcher and its training process); with --threads 2, 30 s.
    done = subprocess.run([sys.executable, str(REPO / "gpu_check" / "check.py"), "--device", "cpu", "--threads", "1",
                           "--work", str(tmp_path / "work"), "--summary", str(summary)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-6000:]
    result = json.loads(summary.read_text(encoding="utf-8"))
    assert result["passed"] and result["device"] == "cpu"
    assert {name: part["status"] for name, part in result["parts"].items()} == \
        {"setup": "PASS", "placement": "PASS", "pipeline": "PASS", "accelerate": "PASS"}
    assert result["parts"]["placement"]["device"] == "cpu"
    pipeline = result["parts"]["pipeline"]
    assert pipeline["answers"] == 8 and pipeline["answers_with_text"] > 0
    assert pipeline["train_sft"]["packed"] and not pipeline["train_laffi_aux_half_padded"]["packed"]
    assert [pipeline[f"eval_{key}"]["total"] for key in ("base_heldout", "sft_heldout", "sft_dev")] == [8, 8, 4]
    assert result["parts"]["accelerate"]["train_laffi"]["processes"] == 1
    # the wheelhouse holds pydantic and not these: if the check's path imports one, it must go in
    imported = set(result["third_party_modules"])
    assert "pydantic" in imported and not imported & set(NOT_IN_WHEELHOUSE)


def load_installer():
    spec = importlib.util.spec_from_file_location("gpu_check_install", REPO / "gpu_check" / "install.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_installer_takes_what_is_missing_or_older_and_unpacks_without_pip(tmp_path):
    install = load_installer()
    assert install.needed("no-such-distribution-here", "1.0") == "missing"
    assert install.needed("pytest", "0.1") is None  # the machine's own is newer
    assert install.needed("pytest", "999.0").endswith("is older")

    wheelhouse = tmp_path / "wheelhouse"
    wheelhouse.mkdir()
    for tag, text in (("py3-none-any", "PICKED = 'pure'\n"), ("cp27-cp27m-win32", "PICKED = 'win32'\n")):
        with zipfile.ZipFile(wheelhouse / f"gcdemo-1.0-{tag}.whl", "w") as wheel:
            wheel.writestr("gcdemo/__init__.py", text)
            wheel.writestr("gcdemo-1.0.data/purelib/gcdemo_extra.py", "")
            wheel.writestr("gcdemo-1.0.data/scripts/gcdemo", "#!/bin/sh\n")
    target = tmp_path / "site"
    install.unpack(wheelhouse, [("gcdemo", "1.0")], target)
    assert (target / "gcdemo" / "__init__.py").read_text() == "PICKED = 'pure'\n"  # the wheel this Python runs
    assert (target / "gcdemo_extra.py").is_file() and not (target / "gcdemo").joinpath("scripts").exists()
    assert len(install.source_stamp()) == 16
