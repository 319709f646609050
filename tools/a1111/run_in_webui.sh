#!/usr/bin/env bash
# Local end-to-end check of the extension inside a real webui on CPU (not a CI test).
#
#   tools/a1111/run_in_webui.sh <webui checkout> <python of a venv with the webui's requirements>
#
# The webui checkout is a plain source tree (`git archive` of
# lllyasviel/stable-diffusion-webui-forge or AUTOMATIC1111/stable-diffusion-webui) with its
# repositories/ already in place at the commits its launch_utils.py pins (Forge:
# huggingface_guess; A1111: stable-diffusion-stability-ai, generative-models, k-diffusion,
# stable-diffusion-webui-assets) and, for A1111 (started with --skip-prepare-environment),
# openai's CLIP package installed in the venv. docs/a1111.md ("Checking it in a real webui")
# gives the steps for both.
# Nothing is downloaded: the checkpoint is random (make_random_sd15_checkpoint.py, from the
# webui's own configs: A1111's v1-inference.yaml and ldm, or Forge's diffusers configs and
# huggingface_guess; or pass an existing one in RANDOM_CKPT), the CLIP tokenizer is
# the one Forge ships in backend/huggingface or, for A1111, built offline from open-clip's
# vocabulary into an HF cache (make_offline_clip_tokenizer.py), the sanitizers are random
# test files (make_test_sanitizers.py). Select phases with PHASES="normal enforce refuse bare";
# PHASES="builtin builtin-enforced" empty models/sanitizers for their run (the built-in sanitizer);
# PHASES=browser starts the real UI and checks the accordion in headless chromium
# (screenshot.py, which writes docs/a1111_accordion*.png; SCREENSHOT_PY = a python with aiohttp).
# QUICK=1 makes each request one step and one image with fewer bad values (for a slow CPU).
# It installs this repository as extensions/embedding-sanitizer and the test-only spy
# sampler_spy.py as extensions/es-sampler-spy (it logs, at every sampling step, whether the conds
# the model gets are the raw encodings of the prompt texts), links the checkpoint a second time
# as random-sd15-refiner.safetensors for the refiner requests, then runs four phases
# through the HTTP API (webui_api_check.py): normal; enforce (including wrong-typed values
# in args, override_settings and saved options); enforcement with a mismatching sanitizer
# pinned at startup (refused); and without the extension.
set -euo pipefail
WEBUI=$(realpath "$1"); PY=$(realpath -s "$2"); PORT=${PORT:-7899}
HERE=$(cd "$(dirname "$0")" && pwd); REPO=$(cd "$HERE/../.." && pwd)
LOG="$WEBUI/embedding_sanitizer_debug.jsonl"; SPY_LOG="$WEBUI/es-sampler-spy.jsonl"
OUT="$WEBUI/es-run"; mkdir -p "$OUT"

if [ -d "$WEBUI/backend" ]; then FLAVOR=forge; else FLAVOR=a1111; fi
export WEBUI_FLAVOR=$FLAVOR
if [ $FLAVOR = forge ]; then
  DEVICE_ARGS=(--always-cpu)
else
  DEVICE_ARGS=(--use-cpu all --no-half --precision full)
  export HF_HOME="$WEBUI/es-hf-home"
  "$PY" "$HERE/make_offline_clip_tokenizer.py" "$HF_HOME"
fi
CKPT="$WEBUI/models/Stable-diffusion/random-sd15.safetensors"
if [ ! -f "$CKPT" ] && [ -n "${RANDOM_CKPT:-}" ]; then
  mkdir -p "$(dirname "$CKPT")"; ln -s "$(realpath "$RANDOM_CKPT")" "$CKPT"
fi
if [ ! -f "$CKPT" ]; then
  mkdir -p "$(dirname "$CKPT")"
  if [ $FLAVOR = a1111 ]; then
    "$PY" "$HERE/make_random_sd15_checkpoint.py" --ldm "$WEBUI" --out "$CKPT"
  else
    "$PY" "$HERE/make_random_sd15_checkpoint.py" --configs "$WEBUI/backend/huggingface/runwayml/stable-diffusion-v1-5" \
        --convert "$WEBUI/repositories/huggingface_guess" --out "$CKPT"
  fi
fi
# the refiner requests need a second SD 1.x checkpoint: the same weights under another name
ln -sf "$(realpath "$CKPT")" "$WEBUI/models/Stable-diffusion/random-sd15-refiner.safetensors"
"$PY" "$HERE/make_test_sanitizers.py" "$WEBUI/models/sanitizers"

install_extension() {
  rm -rf "$WEBUI/extensions/embedding-sanitizer"; mkdir -p "$WEBUI/extensions/embedding-sanitizer"
  # the files an Extensions-tab install would clone (tracked and new, not ignored)
  (cd "$REPO" && git ls-files -co --exclude-standard -z | xargs -0 cp --parents -t "$WEBUI/extensions/embedding-sanitizer")
  # the test-only spy that logs what reaches the sampler at every step (sampler_spy.py)
  rm -rf "$WEBUI/extensions/es-sampler-spy"; mkdir -p "$WEBUI/extensions/es-sampler-spy/scripts"
  cp "$HERE/sampler_spy.py" "$WEBUI/extensions/es-sampler-spy/scripts/"
  printf '[scripts/sampler_spy.py]\nAfter = embedding-sanitizer\n' > "$WEBUI/extensions/es-sampler-spy/metadata.ini"
}

start() {   # $1 = enforce true/false, $2 = weight file, rest = extra args
  local enforce=$1 weights=$2; shift 2
  local ui_args=(--nowebui)
  if [ "$phase" = browser ]; then   # the real UI, small fast generations by default
    ui_args=(--api --ui-config-file "$OUT/ui-config.json")
    echo '{"txt2img/Sampling steps/value": 2, "txt2img/Width/value": 64, "txt2img/Height/value": 64}' > "$OUT/ui-config.json"
  fi
  cat > "$OUT/config.json" <<JSON
{"sd_model_checkpoint": "random-sd15.safetensors", "embedding_sanitizer_weights": "$weights",
 "embedding_sanitizer_enforce": $enforce, "hires_fix_use_firstpass_conds": false}
JSON
  (cd "$WEBUI" && EMBEDDING_SANITIZER_DEBUG_LOG="$LOG" ES_SPY_LOG="$SPY_LOG" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
     exec "$PY" launch.py --skip-prepare-environment --skip-install --skip-torch-cuda-test --skip-version-check \
       --skip-python-version-check "${DEVICE_ARGS[@]}" "${ui_args[@]}" --port "$PORT" --ui-settings-file "$OUT/config.json" \
       --no-download-sd-model "$@" > "$OUT/webui-$phase.log" 2>&1) &
  WEBUI_PID=$!
  for _ in $(seq 1 180); do
    if curl -sf "http://127.0.0.1:$PORT/sdapi/v1/sd-models" > /dev/null; then return 0; fi
    if ! kill -0 $WEBUI_PID 2>/dev/null; then tail -40 "$OUT/webui-$phase.log"; return 1; fi
    sleep 2
  done
  echo "webui did not come up"; tail -40 "$OUT/webui-$phase.log"; return 1
}

stop() {
  kill "$WEBUI_PID" 2>/dev/null || true
  for _ in $(seq 1 30); do kill -0 "$WEBUI_PID" 2>/dev/null || break; sleep 1; done
  kill -9 "$WEBUI_PID" 2>/dev/null || true; wait "$WEBUI_PID" 2>/dev/null || true
}
trap stop EXIT

install_extension
# what the webui does for an extension at launch (skipped here by --skip-install): its install.py,
# with the webui's root on the path so that `import launch` gives the webui's own pip helpers
(cd "$WEBUI" && PYTHONPATH="$WEBUI" "$PY" "$WEBUI/extensions/embedding-sanitizer/install.py")
rm -f "$LOG" "$SPY_LOG"
status=0
PHASES=${PHASES:-normal enforce refuse bare}
for phase in $PHASES; do
  case $phase in
    normal)  start false test-sd1-active.safetensors ;;
    enforce) start true test-sd1-active.safetensors ;;
    refuse)  start true test-sdxl.safetensors ;;
    bare)    start false test-sd1-active.safetensors --disable-extra-extensions ;;
    builtin*) mv "$WEBUI/models/sanitizers" "$WEBUI/models/sanitizers.aside"; mkdir "$WEBUI/models/sanitizers"
              start "$([ $phase = builtin ] && echo false || echo true)" "" ;;
    browser) start false test-sd1-active.safetensors ;;
  esac
  if [ "$phase" = browser ]; then   # headless chromium; writes the README's screenshots into docs/
    "${SCREENSHOT_PY:-$PY}" "$HERE/screenshot.py" "http://127.0.0.1:$PORT" --out-dir "$REPO/docs" || status=1
  else
    "$PY" "$HERE/webui_api_check.py" "http://127.0.0.1:$PORT" "$phase" "$LOG" "$SPY_LOG" || status=1
  fi
  stop
  if [[ $phase = builtin* ]]; then rm -r "$WEBUI/models/sanitizers"; mv "$WEBUI/models/sanitizers.aside" "$WEBUI/models/sanitizers"; fi
done
echo "webui logs and config in $OUT; debug log $LOG; sampler spy log $SPY_LOG"
exit $status
