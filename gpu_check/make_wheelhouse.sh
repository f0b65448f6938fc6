#!/usr/bin/env bash
# Build gpu_check/wheelhouse/ (gitignored) on a machine with PyPI access: what `bash gpu_check/run.sh`
# installs on a GPU machine that has torch, transformers, peft and accelerate but no network.
#
#   bash gpu_check/make_wheelhouse.sh        (or: make gpu-wheelhouse)
#
# It holds the laffi wheel and the packages laffi imports on the check's path that such a machine
# lacks: pydantic (laffi.records) and its dependencies, pinned to the versions in .venv (pyproject's
# pins). The rest of laffi's dependencies are imported only by other commands (openai: the LLM
# annotator; flask, waitress, sqlalchemy: laffi serve; matplotlib: laffi report and laffi run's
# report; gguf: GGUF models), so the check runs the stages one by one rather than `laffi run`.
# pydantic-core is compiled: its wheels come for each of PY_VERSIONS, on PLATFORM.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
PY_VERSIONS=${PY_VERSIONS:-"3.10 3.11 3.12 3.13 3.14"}
PLATFORM=${PLATFORM:-manylinux2014_x86_64}
WHEELHOUSE=gpu_check/wheelhouse
PURE="pydantic annotated-types typing-inspection typing-extensions"
BINARY="pydantic-core"

pin() {  # NAME==VERSION as installed in $PYTHON's environment
  "$PYTHON" -c "import importlib.metadata as m, sys; print(f'{sys.argv[1]}=={m.version(sys.argv[1])}')" "$1"
}

rm -rf "$WHEELHOUSE"
mkdir -p "$WHEELHOUSE"
quiet=(--quiet --disable-pip-version-check)
# from a copy of the sources, so that no build/ folder of an earlier build adds stale modules
copy=$(mktemp -d)
trap 'rm -rf "$copy"' EXIT
tar -cf - --exclude=__pycache__ --exclude='*.pyc' --exclude='*.egg-info' pyproject.toml README.md src \
  | tar -xf - -C "$copy"
"$PYTHON" -m pip wheel "${quiet[@]}" --no-deps --wheel-dir "$WHEELHOUSE" "$copy"
{
  echo "# what gpu_check/install.py installs where the machine lacks it (or has an older one)"
  wheel=$(basename "$WHEELHOUSE"/laffi-*.whl)
  echo "laffi==$(echo "$wheel" | cut -d- -f2)"
  for name in $PURE $BINARY; do pin "$name"; done
} > "$WHEELHOUSE/requirements.txt"
"$PYTHON" gpu_check/install.py --stamp > "$WHEELHOUSE/STAMP"

pure_pins=$(for name in $PURE; do pin "$name"; done)
# shellcheck disable=SC2086
"$PYTHON" -m pip download "${quiet[@]}" --no-deps --only-binary=:all: --dest "$WHEELHOUSE" $pure_pins
for version in $PY_VERSIONS; do
  for name in $BINARY; do
    "$PYTHON" -m pip download "${quiet[@]}" --no-deps --only-binary=:all: --dest "$WHEELHOUSE" \
      --python-version "$version" --implementation cp --platform "$PLATFORM" "$(pin "$name")" \
      || echo "make_wheelhouse: no $name wheel for Python $version on $PLATFORM; the check cannot run there"
  done
done
for name in $BINARY; do  # one Python without it is a warning above; none at all (no network, a wrong PLATFORM) fails
  if ! ls "$WHEELHOUSE"/"${name//-/_}"-*.whl >/dev/null 2>&1; then
    echo "make_wheelhouse: no $name wheel for any of Python $PY_VERSIONS on $PLATFORM" >&2
    exit 1
  fi
done

echo "gpu_check/wheelhouse: $(ls "$WHEELHOUSE"/*.whl | wc -l) wheels, $(du -sh "$WHEELHOUSE" | cut -f1)"
ls -1 "$WHEELHOUSE"
