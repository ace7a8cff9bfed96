#!/usr/bin/env bash
# Everything GPU-only about evalhub, checked and measured in one call of under 8 minutes on one H200:
#   env       nvidia-smi, versions, CUDA, a bf16 matmul and an SVD, whether bitsandbytes works
#   finetune  evalhub's full, lora, dora, qlora and galore against HF Trainer + peft on a random
#             1.1B-parameter Llama built here: tokens/s, peak GPU memory, % of full fine-tuning
#   serving   evalhub's LocalEngine with several LoRA adapters against one merged model, and
#             greedy answers of the mixed stream against each request served alone
#   summary   the tables, also in $OUT/summary.txt
#
# The H200 image has torch, transformers, peft and accelerate but not pydantic (evalhub needs it),
# bitsandbytes or vLLM, and no network. Once, on the development machine:
#   bash bench/gpu/wheels.sh   # bench/gpu/wheels/: pydantic, bitsandbytes, galore-torch (~46 MB)
# then with the device tool:
#   run   command: bash bench/gpu/run.sh   carry: ["bench/gpu/wheels"]   timeout_s: 540
# $OUT comes back with summary.txt, parts.tsv, run.log, env.json, finetune.json, serving.json.
#
# CPU dry run of every path that runs without CUDA (tiny profile, about 2 minutes on 2 cores):
#   EVALHUB_GPU_DRY_RUN=1 OUT=/tmp/gpuout bash bench/gpu/run.sh
#
# Each part runs in its own process under `timeout`, inside one deadline (EVALHUB_GPU_BUDGET
# seconds from the start, default 450), so a failure or a hang loses only that part. parts.tsv
# has a line "part<TAB>status<TAB>seconds<TAB>detail" for each. Exit status 1 if any part failed.
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
case "${EVALHUB_GPU_DRY_RUN:-0}" in "" | 0 | false | no) dry=0 ;; *) dry=1 ;; esac
started=$(date +%s)
budget=${EVALHUB_GPU_BUDGET:-$((dry ? 300 : 450))}
deadline=$((started + budget))
serving_reserve=$((dry ? 90 : 150)) # seconds kept for serving and the summary
summary_reserve=20

out=${OUT:-$repo/bench/results/gpu}
mkdir -p "$out"
parts=$out/parts.tsv
logs=$(mktemp -d)
# The image's python3 holds torch on the device; the checkout's venv in the dry run.
if [[ -n ${EVALHUB_GPU_PYTHON:-} ]]; then
  python=$EVALHUB_GPU_PYTHON
elif ((dry)) && [[ -x $repo/.venv/bin/python ]]; then
  python=$repo/.venv/bin/python
else
  python=python3
fi
# evalhub from the checkout itself, never pip-installed (nothing can be fetched there).
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
export EVALHUB_GPU_OUT=$out PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1

record() { printf '%s\t%s\t%s\t%s\n' "$@" >>"$parts"; }

# part NAME LIMIT COMMAND...: COMMAND under `timeout LIMIT` (it signals the whole process group);
# the detail is the command's last "result: " line, or why it stopped.
part() {
  local name=$1 limit=$2 began code status detail
  shift 2
  if ((limit < 10)); then
    echo "== $name: skipped, ${limit}s left of the ${budget}s budget"
    record "$name" skipped 0 "no time left of the ${budget}s budget"
    return 1
  fi
  echo "== $name (at most ${limit}s)"
  began=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$logs/$name.log"
  code=${PIPESTATUS[0]}
  detail=$(grep -a '^result: ' "$logs/$name.log" | tail -n 1 | cut -c9-)
  case $code in
    0) status=ok ;;
    124 | 137) status=timeout detail="stopped after ${limit}s${detail:+; $detail}" ;;
    *) status=failed detail="exit $code${detail:+: $detail}" ;;
  esac
  record "$name" "$status" "$(($(date +%s) - began))" "$detail"
  echo "== $name: $status${detail:+: $detail}"
  [[ $status == ok ]]
}

main() {
  : >"$parts"
  echo "evalhub GPU checks ($( ((dry)) && echo 'CPU dry run' || echo 'GPU')), budget ${budget}s," \
    "python $python, results in $out"

  # Wheels the image lacks, into a directory put first on PYTHONPATH. In the dry run they are
  # only installed (for Python 3.12, as a check of the set): this venv has its own versions.
  local wheels=("$here"/wheels/*.whl) site=/tmp/evalhub-gpu-site platform=()
  export EVALHUB_GPU_WHEELS="none carried"
  if [[ -f ${wheels[0]} ]]; then
    ((dry)) && platform=(--only-binary=:all: --python-version 3.12 --implementation cp
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
    rm -rf "$site"
    if part wheels 120 "$python" -m pip install -q --no-index --no-deps --no-compile \
      --no-cache-dir --upgrade --target "$site" "${platform[@]}" "${wheels[@]}"; then
      EVALHUB_GPU_WHEELS="installed $(basename -a "${wheels[@]}" | cut -d- -f1,2 | tr '\n' ' ')"
      if ((dry)); then
        EVALHUB_GPU_WHEELS+="(dry run: not used)"
      else
        export PYTHONPATH="$site:$PYTHONPATH"
      fi
    fi
  else
    record wheels skipped 0 "no bench/gpu/wheels: run bench/gpu/wheels.sh if pydantic is missing"
  fi

  part env 90 "$python" "$here/env_report.py"
  local until=$((deadline - serving_reserve))
  part finetune "$((until - $(date +%s)))" \
    "$python" "$here/finetune.py" run --runs all --deadline "$((until - 10))"
  until=$((deadline - summary_reserve))
  part serving "$((until - $(date +%s)))" "$python" "$here/serving.py" --deadline "$((until - 10))"
  part summary 60 "$python" "$here/summary.py" --parts "$parts"

  local total=$(($(date +%s) - started))
  echo "total ${total}s of the ${budget}s budget; results in $out"
  ! cut -f2 "$parts" | grep -qE '^(failed|timeout)$'
}

main 2>&1 | tee "$out/run.log"
code=${PIPESTATUS[0]}
rm -rf "$logs"
exit "$code"
