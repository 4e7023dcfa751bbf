#!/usr/bin/env bash
# Issue 18's GPU acceptance on a GPU machine, in under 8 minutes on one H100: the `gpu` tests (pytest -m gpu), then
# the GPU benchmark rows (benchmarks/gpu_throughput.py), ending with the Markdown rows to paste into
# benchmarks/RESULTS.md. Run from anywhere: bash benchmarks/gpu_check.sh; the interpreter is $PYTHON, else the
# repository's .venv/bin/python, else python3.
# Without CUDA it says so in one line and exits 0; it exits 1 when a test fails or a target is missed.
set -uo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[[ -z ${PYTHON:-} && -x .venv/bin/python ]] && python=.venv/bin/python

if ! gpus=$("$python" -c 'import torch; print(torch.cuda.device_count())'); then
    echo "error: $python cannot import torch; set PYTHON to the project's interpreter" >&2
    exit 2
fi
if ((gpus == 0)); then
    echo "no CUDA: the GPU acceptance tests and benchmark rows need a CUDA GPU; nothing run"
    exit 0
fi
started=$SECONDS
"$python" -m pytest -m gpu -p no:cacheprovider -q
tests=$?
"$python" benchmarks/gpu_throughput.py
bench=$?
echo
echo "pytest -m gpu exit ${tests}, benchmarks exit ${bench}; $((SECONDS - started)) s in all (target < 480 s on one H100)"
((tests == 0 && bench == 0))
