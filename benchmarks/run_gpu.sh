#!/usr/bin/env bash
# Every GPU figure of docs/benchmarks.md in one call on a lent H100/H200 (about 5 minutes):
# the device tool's run with command "bash benchmarks/run_gpu.sh", carry [".whl"], timeout_s 540.
#
# The device image has torch, timm, numpy, pluggy, PyYAML and Pillow but no pydantic, and no
# network. Once, on a machine with a package index, put pydantic's wheels (about 3 MB) in the
# ignored folder .whl so that they travel with the call:
#   mkdir -p .git/info && echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl pydantic==2.14.4 \
#     pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0
# OpenSlide is not needed there (the suite writes its patch cache from synthetic arrays).
set -o pipefail; out="${OUT:-runs/benchmarks}"; mkdir -p "$out"; { [ ! -d .whl ] || { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site; }; } && PYTHONUNBUFFERED=1 python3 benchmarks/gpu_suite.py --out "$out" 2>&1 | tee "$out/gpu_suite.log"
