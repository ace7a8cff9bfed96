#!/usr/bin/env bash
# Downloads what the GPU checks import but the H200 image lacks, as wheels for that image's Python
# 3.12 on x86-64, into bench/gpu/wheels (git-ignored, about 46 MB of the 64 MiB a device call may
# carry); run.sh installs them there with pip --no-index:
#   - pydantic with its dependencies (typing-extensions too: the image's may be older than
#     pydantic-core wants), in the versions of this checkout's .venv: evalhub imports it;
#   - bitsandbytes (QLoRA's 4-bit NF4 kernels) and galore-torch (HF Trainer's GaLore baseline).
#
#   bash bench/gpu/wheels.sh      # then name bench/gpu/wheels in the device tool's `carry`
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
python=${EVALHUB_GPU_PYTHON:-$here/../../.venv/bin/python}
target=(--only-binary=:all: --python-version 3.12 --implementation cp
  --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)

pins=$("$python" -c '
import sys
from importlib.metadata import version
print(" ".join(f"{name}=={version(name)}" for name in sys.argv[1:]))
' pydantic pydantic-core annotated-types typing-inspection typing-extensions)

rm -rf "$here/wheels"
# shellcheck disable=SC2086  # $pins is a list of requirement words
"$python" -m pip download -q --no-deps "${target[@]}" -d "$here/wheels" $pins \
  bitsandbytes==0.50.2 galore-torch==1.0
# The set must be closed: pydantic's dependencies must resolve from these files alone.
"$python" -m pip install -q --dry-run --ignore-installed --no-index --find-links "$here/wheels" \
  "${target[@]}" --target "$(mktemp -d)" pydantic
ls -l "$here/wheels"
