#!/usr/bin/env bash
# The ComfyUI tests against a newer ComfyUI (0.3.x: T5, SD3, Flux text encoders), which CI cannot
# fetch. The tests that need it (T5-base through CLIPLoader type stable_audio, SD3 with and without
# a one-layer T5-XXL, Flux with a one-layer T5-XXL, the built-in sanitizer on SD3 and Flux, the
# engine's SD3 / Flux encoders against ComfyUI's, training on T5-base and on SD3 with T5, operator
# mode with guiders: an SDXL negative below CFG 1, DualCFGGuider's negative) are skipped on the
# vendored March 2024 ComfyUI that CI uses.
#
#   git clone https://github.com/comfyanonymous/ComfyUI /path/to/ComfyUI   # v0.3.64 was tested
#   COMFYUI_ROOT=/path/to/ComfyUI tools/comfyui/run_newer_comfyui.sh [pytest args]
#
# ComfyUI's own requirements are not needed: its optional audio/video/upscale modules that are
# not installed are replaced by empty stand-ins while it loads (tests/comfyui/comfy_env.py).
# Needs about 6 GB of memory and 10-20 minutes on 2 CPU cores (T5-base at full size, T5-XXL with
# one layer).
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${COMFYUI_ROOT:?set COMFYUI_ROOT to a ComfyUI 0.3.x checkout}"
export COMFYUI_ROOT
PYTHON="${PYTHON:-python}"
exec "$PYTHON" -m pytest -q tests/comfyui/test_encoder_families.py tests/comfyui/test_builtin_sanitizer.py \
    tests/comfyui/test_nodes.py tests/comfyui/test_training.py tests/comfyui/test_example_workflows.py \
    tests/comfyui/test_operator_mode.py tests/comfyui/test_operator_paths.py "$@"
