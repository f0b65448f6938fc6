#!/usr/bin/env bash
# The prepared GPU check: run in the repository root of a machine with a GPU, Python, torch,
# transformers, peft and accelerate, and no network (gpu_check/wheelhouse/ built beforehand by
# `make gpu-wheelhouse`, carried along with the working tree):
#
#   bash gpu_check/run.sh                  # arguments go to gpu_check/check.py (--device cpu, --skip ...)
#
# Prints the versions and the GPU first, installs laffi and what the machine lacks into a temporary
# folder (gpu_check/install.py: nothing is installed into the machine's Python), then runs
# gpu_check/check.py. The log (gpu_check.log) and the JSON summary (gpu_check.json) go to $OUT if it
# is set, else to the temporary folder. Exits nonzero if anything failed. PYTHON picks the Python.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

if [ -z "${PYTHON:-}" ]; then
  for candidate in python3 python; do
    if command -v "$candidate" >/dev/null && "$candidate" -c "import torch" 2>/dev/null; then
      PYTHON=$candidate
      break
    fi
  done
fi
if [ -z "${PYTHON:-}" ]; then
  echo "gpu_check: no python3 or python here imports torch; set PYTHON" >&2
  exit 2
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/laffi-gpu-check.XXXXXX")
RESULTS=${OUT:-$WORK}
mkdir -p "$RESULTS"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export LAFFI_CACHE=$WORK/cache PYTHONDONTWRITEBYTECODE=1

{
  echo "gpu_check: $(date -u +%FT%TZ), $(command -v "$PYTHON") ($("$PYTHON" --version 2>&1)), results in $RESULTS"
  "$PYTHON" - <<'EOF' || exit 2
import importlib.metadata as m
import torch
names = ("torch", "transformers", "peft", "accelerate", "tokenizers", "pydantic", "typing-extensions")
def version(name):
    try:
        return m.version(name)
    except m.PackageNotFoundError:
        return "-"
print("gpu_check: " + ", ".join(f"{n} {version(n)}" for n in names) + f"; CUDA {torch.version.cuda}")
gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
print(f"gpu_check: GPUs: {gpus or 'none'}" + (f"; bf16 units: {torch.cuda.is_bf16_supported(including_emulation=False)}" if gpus else ""))
EOF
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.used,memory.total,driver_version --format=csv
  "$PYTHON" gpu_check/install.py "$WORK/site" || exit 2
  PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" gpu_check/check.py --work "$WORK" \
    --summary "$RESULTS/gpu_check.json" "$@"
} 2>&1 | tee "$RESULTS/gpu_check.log"
status=${PIPESTATUS[0]}
echo "gpu_check: exit $status; log $RESULTS/gpu_check.log, summary $RESULTS/gpu_check.json"
exit "$status"
