"""Install laffi and what the machine lacks from gpu_check/wheelhouse/ into a folder of its own.

    python gpu_check/install.py TARGET      # then PYTHONPATH=TARGET python ...
    python gpu_check/install.py --stamp     # print the stamp of the laffi sources (make_wheelhouse.sh)

Run with the machine's own Python (the one with torch, transformers, peft and accelerate). Nothing is
installed into that Python: TARGET comes first on PYTHONPATH. From wheelhouse/requirements.txt, a
package is installed when the machine has no version of it or an older one; torch, transformers, peft
and accelerate are never in the wheelhouse, so the machine's own are used. laffi comes from its wheel
when the wheel was built from the sources here (wheelhouse/STAMP); after an edit it would be stale,
and TARGET/laffi links to src/laffi instead. pip installs them (`--no-index --find-links`); where the
Python has no pip, the wheels are unpacked.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WHEELHOUSE = Path(__file__).resolve().parent / "wheelhouse"


def source_stamp() -> str:
    """A hash of what the laffi wheel is built from: src/laffi's files and pyproject.toml."""
    digest = hashlib.sha256()
    files = [p for p in (REPO / "src" / "laffi").rglob("*")
             if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"]
    for path in sorted(files) + [REPO / "pyproject.toml"]:
        digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def requirements(wheelhouse: Path) -> list[tuple[str, str]]:
    pins = []
    for line in (wheelhouse / "requirements.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins.append((name.strip(), version.strip()))
    return pins


def needed(name: str, version: str) -> str | None:
    """Why the wheelhouse's `name`==`version` must be installed, or None if the machine's own will do."""
    from packaging.version import Version  # transformers and accelerate need packaging, so it is there

    try:
        have = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "missing"
    return f"{have} is older" if Version(have) < Version(version) else None


def unpack(wheelhouse: Path, pins: list[tuple[str, str]], target: Path) -> None:
    """Install wheels without pip: unpack each pin's wheel that this Python can run into `target`."""
    from packaging.tags import sys_tags
    from packaging.utils import canonicalize_name, parse_wheel_filename

    supported = list(sys_tags())
    for name, version in pins:
        choices = []
        for wheel in wheelhouse.glob("*.whl"):
            wheel_name, wheel_version, _, tags = parse_wheel_filename(wheel.name)
            if canonicalize_name(wheel_name) == canonicalize_name(name) and str(wheel_version) == version:
                ranks = [supported.index(tag) for tag in tags if tag in supported]
                if ranks:
                    choices.append((min(ranks), wheel))
        if not choices:
            raise SystemExit(f"install: no wheel of {name}=={version} in {wheelhouse} runs on this Python "
                             f"({sys.version.split()[0]}); rebuild with PY_VERSIONS including it")
        wheel = min(choices)[1]
        with zipfile.ZipFile(wheel) as archive:
            for member in archive.namelist():
                parts = member.split("/")
                if parts[0].endswith(".data"):  # purelib/platlib go to the top; scripts and headers are not needed
                    if len(parts) < 3 or parts[1] not in ("purelib", "platlib"):
                        continue
                    parts = parts[2:]
                destination = target.joinpath(*parts)
                if member.endswith("/"):
                    continue
                destination.parent.mkdir(parents=True, exist_ok=True)
                destination.write_bytes(archive.read(member))
        print(f"install: unpacked {wheel.name}")


def install(target: Path, wheelhouse: Path = WHEELHOUSE) -> None:
    if not (wheelhouse / "requirements.txt").is_file():
        raise SystemExit(f"install: {wheelhouse} is not built; run `bash gpu_check/make_wheelhouse.sh` "
                         "(or `make gpu-wheelhouse`) on a machine with PyPI access")
    target.mkdir(parents=True, exist_ok=True)
    pins = []
    for name, version in requirements(wheelhouse):
        if name == "laffi":
            stamp_file = wheelhouse / "STAMP"
            stamp = stamp_file.read_text(encoding="utf-8").strip() if stamp_file.is_file() else ""
            if stamp == source_stamp():
                pins.append((name, version))
                print(f"install: laffi {version} from its wheel (built from these sources, stamp {stamp})")
            else:
                if (target / "laffi").is_symlink():
                    (target / "laffi").unlink()
                (target / "laffi").symlink_to(REPO / "src" / "laffi", target_is_directory=True)
                print(f"install: the laffi wheel is stale (stamp {stamp or 'none'}, sources {source_stamp()}): "
                      "laffi comes from src/laffi; `make gpu-wheelhouse` rebuilds the wheel")
            continue
        why = needed(name, version)
        if why:
            pins.append((name, version))
            print(f"install: {name}=={version} ({why})")
        else:
            print(f"install: {name} {importlib.metadata.version(name)}: the machine's own")
    if not pins:
        return
    if importlib.util.find_spec("pip") is None:
        unpack(wheelhouse, pins, target)
        return
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-index",
                    "--find-links", str(wheelhouse), "--no-deps", "--no-warn-script-location",
                    "--target", str(target), *(f"{name}=={version}" for name, version in pins)], check=True)


def main(argv: list[str]) -> int:
    if argv == ["--stamp"]:
        print(source_stamp())
        return 0
    if len(argv) != 1 or argv[0].startswith("-"):
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    install(Path(argv[0]).resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
