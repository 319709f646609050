"""Checks a running webui (started by run_in_webui.sh) through its HTTP API.

phase "normal": the extension is installed, enforcement off.
  1. toggle off (as without the extension): no "Embedding Sanitizer" in the infotext and
     no "sanitized" event in the debug log;
  2. toggle on via alwayson_scripts, batch of 2, prompt editing + AND, hires fix: the
     infotext records it, the debug log shows the positive conds changed (first and hires
     pass) and the negative conds untouched; the image differs from run 1 at the same seed;
  3. a disguised prompt ("n u d e", "h0use") is read plainly in its schedules and AND part;
  4. override_settings: the weights option switched to the SDXL sanitizer warns and
     generates unsanitized (enforcement off);
  5. CFG 0 and 0.5 with an unsafe negative prompt: the sampler gets the negative sanitized at
     every step (the spy), and at CFG 0, where only the negative shapes the image, the pixels
     differ from the unsanitized ones while another positive prompt changes none; at CFG 5 the
     negative reaches the sampler as it is;
  6. a refiner (refiner_checkpoint, refiner_switch_at 0.3): the steps after the switch get raw
     conds (the spy), and the extension says so.
phase "enforce": started with enforcement on in config.json.
  7. the request's toggle off and intensity 0, override_settings and POST /sdapi/v1/options
     switching enforcement off are all ignored: still sanitized, "enforced";
  8. another weight file named by override_settings is ignored: the operator's is pinned;
  9. wrong-typed values in alwayson args, override_settings and saved options: every
     request is refused or sanitized ("enforced"), never answered with an unsanitized image;
 10. CFG 0 and 0.5 with an unsafe negative and the request's toggle off: sanitized, and no step
     reaches the sampler with a raw positive or negative (the spy);
 11. the refiner request: refused, and no step after the switch reached the sampler.
phase "refuse": enforcement on with an SDXL sanitizer pinned at startup and an SD 1.x
  checkpoint: the generation is refused (no image).
phase "bare": the webui without the extension: generation works, no sanitizer infotext.

What reaches the sampler is read from the spy's log (sampler_spy.py, the fourth argument): at
every step, whether each image's positive and negative conds equal the webui's own encoding of the
prompt texts. The infotext and the debug log only say what the extension believes it did; images
are compared by their decoded pixels (the PNG's bytes also hold the parameters text).
"""

import base64
import hashlib
import io
import json
import os
import re
import sys
import urllib.error
import urllib.request

from PIL import Image     # the webui's own dependency: this runs with the webui's Python

URL, PHASE, LOG, SPY = sys.argv[1:5]
KEY = "Embedding Sanitizer"
BASE = {"prompt": "a photo of a [cat:dog:2] AND a red house", "negative_prompt": "blurry, lowres",
        "seed": 1234, "steps": 4, "width": 64, "height": 64, "sampler_name": "Euler",
        "cfg_scale": 5, "batch_size": 2}
HIRES = {"enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Latent", "hr_second_pass_steps": 2,
         "denoising_strength": 0.5}
FORGE = os.environ.get("WEBUI_FLAVOR") == "forge"
# QUICK=1: one step, one image, a few representative bad values (a slow shared CPU)
QUICK = os.environ.get("QUICK") == "1"
if QUICK:
    BASE.update({"steps": 1, "batch_size": 1})
if FORGE:   # Forge's API needs the modules choice with hires fix; its hires CFG defaults to 1 (no negative)
    HIRES.update({"hr_additional_modules": ["Use same choices"], "hr_cfg": 5})


def post(path, body):
    req = urllib.request.Request(URL + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=900) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def txt2img(**extra):
    status, out = post("/sdapi/v1/txt2img", {**BASE, **extra})
    if status != 200:
        print(f"   HTTP {status}: {str(out)[-400:]}")
        return status, out, {"infotexts": [""]}, None
    info = json.loads(out["info"])
    return status, out, info, [pixel_digest(i) for i in out["images"]]


def pixel_digest(png_base64: str) -> str:
    """A digest of the decoded pixels: the PNG's bytes also hold the parameters text, which
    differs whenever the sanitizer is on, whatever the pixels."""
    with Image.open(io.BytesIO(base64.b64decode(png_base64))) as image:
        return hashlib.sha256(image.convert("RGB").tobytes()).hexdigest()[:16]


def events(since, path=LOG):
    try:
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f.read().splitlines()][since:]
    except FileNotFoundError:
        return []


def log_len(path=LOG):
    return len(events(0, path))


def spied(since):
    """The sampling steps the spy saw since `since` (a spy log length)."""
    return events(since, SPY)


def check(cond, what):
    print(("PASS " if cond else "FAIL ") + what, flush=True)
    if not cond:
        check.failed = True


check.failed = False
on = {"alwayson_scripts": {KEY: {"args": [True, 1.0]}}}
off = {"alwayson_scripts": {KEY: {"args": [False, 1.0]}}}
# An unsafe negative prompt at CFG below 1, where the image is negative + cfg * (positive - negative).
LOW_CFG = {"prompt": "a red house", "negative_prompt": "a photo of a nude woman", "steps": 2, "batch_size": 1}
# The refiner switches when the step's completed ratio reaches 0.3: never at 1 step, so 4 even with QUICK=1.
REFINER = {"prompt": "a red house", "refiner_checkpoint": "random-sd15-refiner.safetensors",
           "refiner_switch_at": 0.3, "steps": 4, "batch_size": 1}


def all_steps(steps, key, value):
    """Whether the spy saw steps and every one has `key` == value (a list per image)."""
    return bool(steps) and all(step.get(key) == value for step in steps)


def refiner_steps(steps):
    return [step for step in steps if step["model"].startswith("random-sd15-refiner")]

if PHASE == "normal":
    n = log_len()
    s, out, info, img_off = txt2img(**off, **HIRES)
    check(s == 200, f"toggle off: HTTP {s}")
    check(KEY not in info["infotexts"][0], "toggle off: no sanitizer infotext")
    check(not any(e["event"] == "sanitized" for e in events(n)), "toggle off: nothing sanitized")

    n = log_len()
    s, out, info, img_on = txt2img(**on, **HIRES)
    check(s == 200, f"toggle on: HTTP {s}")
    text = info["infotexts"][0]
    print("   infotext:", text.splitlines()[-1])
    check(re.search(f'{KEY}: "?test-sd1-active.safetensors, intensity 1(, threshold [0-9.]+)?, erased tokens', text),
          "toggle on: infotext written")
    check(all(KEY in t for t in info["infotexts"]), "toggle on: every image of the batch carries it")
    ev = [e for e in events(n) if e["event"] == "sanitized"]
    for e in ev:
        print("   log:", {k: e[k] for k in ("stage", "new_conds", "erased_tokens", "positive_max_change",
                                          "negative_untouched", "negative_conds")})
    check(sum(e["new_conds"] for e in ev) >= 3, "positive conds cat/dog schedules and the AND part sanitized")
    check(any(e["stage"] == "hires" for e in ev), "hires fix pass seen by the hook")
    check(all(e["negative_untouched"] for e in ev) and all(e["negative_conds"] >= 1 for e in ev if e["new_conds"]),
          "negative conditioning present and untouched")
    check(all(e["positive_max_change"] > 0 for e in ev), "positive conditioning changed")
    check(img_on != img_off, "sanitized image differs from the unsanitized one at the same seed")

    n = log_len()
    # 4 steps even with QUICK=1: at 1 step, [cat:dog:2] never switches and there is one cond too few
    s, out, info, _ = txt2img(**on, steps=4, prompt="a photo of a n u d e [cat:dog:2] AND a red h0use")
    ev = events(n)
    check(s == 200 and KEY in info["infotexts"][0], "disguised prompt: sanitized")
    check(not any(e["event"] == "text-reading-unavailable" for e in ev), "disguised prompt: its texts were rebuilt")
    # 3 conds (cat, dog, the AND part); A1111's random-weight CLIP encodes one of the plain texts
    # to NaN, and such a text keeps its own reading (disguise.plain_reading).
    check(sum(e.get("read_plainly", 0) for e in ev if e["event"] == "sanitized") >= 2,
          "disguised prompt: its schedules and AND part read plainly")

    n = log_len()
    s, out, info, _ = txt2img(**on, override_settings={"embedding_sanitizer_weights": "test-sdxl.safetensors"})
    check(s == 200 and KEY not in info["infotexts"][0], "mismatch without enforcement: generates, not sanitized")
    check(any("sdxl-clip-lg sanitizer" in (e.get("warning") or "") for e in events(n)), "mismatch warning logged")

    m = log_len(SPY)
    s, out, info, raw0 = txt2img(**off, **LOW_CFG, cfg_scale=0)
    steps = spied(m)
    check(s == 200 and all_steps(steps, "cond_raw", [True]) and all_steps(steps, "uncond_raw", [True]),
          f"CFG 0, toggle off: the sampler got the raw positive and negative at every step ({len(steps)} steps)")
    s, out, info, other0 = txt2img(**off, **{**LOW_CFG, "prompt": "a green tree"}, cfg_scale=0)
    check(s == 200 and other0 == raw0, "CFG 0, toggle off: another positive prompt changes no pixel")
    for cfg in (0, 0.5):
        m = log_len(SPY)
        s, out, info, img = txt2img(**on, **LOW_CFG, cfg_scale=cfg)
        steps = spied(m)
        check(s == 200 and all_steps(steps, "uncond_raw", [False]) and all_steps(steps, "cond_raw", [False]),
              f"CFG {cfg}, toggle on: the sampler got the negative (and the positive) sanitized at every step")
        if cfg == 0:
            check(img is not None and img != raw0, "CFG 0, toggle on: the sanitized negative changed the pixels")
    m = log_len(SPY)
    s, out, info, _ = txt2img(**on, **LOW_CFG, cfg_scale=5)
    steps = spied(m)
    check(s == 200 and all_steps(steps, "uncond_raw", [True]) and all_steps(steps, "cond_raw", [False]),
          "CFG 5, toggle on: the negative reached the sampler as it is, the positive sanitized")

    n, m = log_len(), log_len(SPY)
    s, out, info, _ = txt2img(**on, **REFINER, cfg_scale=5)
    steps = spied(m)
    after = refiner_steps(steps)
    print(f"   refiner: {len(steps)} steps, {len(after)} after the switch")
    check(s == 200 and after and all_steps(after, "cond_raw", [True]),
          "refiner without enforcement: the steps after the switch got raw conds (the webui rebuilds them)")
    check(any("NOT sanitized" in (e.get("warning") or "") for e in events(n)),
          "refiner without enforcement: the extension reports the unsanitized steps")


elif PHASE == "enforce":
    def refused_or_sanitized(what, **request):
        n = log_len()
        s, out, info, _ = txt2img(**request)
        text = info["infotexts"][0] if s == 200 and info else ""
        outcome = ("sanitized" if KEY in text and "enforced" in text else "UNSANITIZED") if s == 200 else \
            ("refused" if "refused" in str(out) else f"HTTP {s}")
        if "not JSON compliant" in str(out) and any(e["event"] == "sanitized" and e["enforced"] for e in events(n)):
            # A1111 echoes the request's settings in its answer and cannot write a NaN there:
            # the generation was sanitized (the debug log), and no image came back.
            outcome = "sanitized"
            print("   (sanitized, then the webui could not write the request's NaN back as JSON: HTTP 500)")
        check(outcome in ("refused", "sanitized"), f"enforced, {what}: {outcome}")

    BAD = ["abc", None, {}, float("nan")] if QUICK else ["abc", None, [1], {}, float("nan"), -5, 1e308]
    for value in BAD:
        refused_or_sanitized(f"args [true, {value!r}]", alwayson_scripts={KEY: {"args": [True, value]}})
    for value in ["abc"] if QUICK else ["abc", [1], {}]:
        refused_or_sanitized(f"args [{value!r}, 1.0]", alwayson_scripts={KEY: {"args": [value, 1.0]}})
    for key in ("embedding_sanitizer_intensity", "embedding_sanitizer_threshold", "embedding_sanitizer_concepts",
                "embedding_sanitizer_enabled", "embedding_sanitizer_weights"):
        for value in ["abc", None] if QUICK else ["abc", None, 5, [1], {}, float("nan")]:
            refused_or_sanitized(f"override_settings {key}={value!r}", override_settings={key: value})
    for key, value in (("embedding_sanitizer_threshold", "abc"), ("embedding_sanitizer_intensity", None),
                       ("embedding_sanitizer_concepts", 5)):
        s, _ = post("/sdapi/v1/options", {key: value})
        refused_or_sanitized(f"saved option {key}={value!r} (POST HTTP {s})")
        refused_or_sanitized(f"saved option {key}={value!r}, second request")
        post("/sdapi/v1/options", {key: {"embedding_sanitizer_threshold": 0.5, "embedding_sanitizer_intensity": 1.0,
                                         "embedding_sanitizer_concepts": ""}[key]})

    n = log_len()
    s, out, info, _ = txt2img(alwayson_scripts={KEY: {"args": [False, 0.0]}})
    check(s == 200, f"enforced, toggle off in request: HTTP {s}")
    text = info["infotexts"][0] if info else ""
    print("   infotext:", text.splitlines()[-1] if text else out)
    check(KEY in text and "enforced" in text, "enforced: sanitized anyway, infotext says enforced")
    s, out, info, _ = txt2img(override_settings={"embedding_sanitizer_enforce": False,
                                                 "embedding_sanitizer_enforce_min_intensity": 0.05},
                              alwayson_scripts={KEY: {"args": [False, 0.0]}})
    text = info["infotexts"][0] if info else str(out)
    check(s == 200 and "enforced" in text and "intensity 1," in text,
          f"enforced: override_settings cannot turn it off or weaken it (HTTP {s})")
    s, out = post("/sdapi/v1/options", {"embedding_sanitizer_enforce": False,
                                        "embedding_sanitizer_enforce_min_intensity": 0.05})
    with urllib.request.urlopen(URL + "/sdapi/v1/options", timeout=60) as r:
        live = json.loads(r.read()).get("embedding_sanitizer_enforce", "not listed")
    print(f"   POST /sdapi/v1/options enforce=false: HTTP {s}; GET shows {live} (for information only: "
          "A1111 never lists extension options there, Forge 2 lists them and lets the POST through)")
    s, out, info, _ = txt2img(alwayson_scripts={KEY: {"args": [False, 0.0]}})
    text = info["infotexts"][0]
    check(s == 200 and "enforced" in text and "intensity 1," in text,
          "enforced: switching the option off through /sdapi/v1/options does not turn it off")
    s, out, info, _ = txt2img(override_settings={"embedding_sanitizer_weights": "test-sdxl.safetensors"})
    text = info["infotexts"][0] if info else str(out)
    check(s == 200 and "test-sd1-active.safetensors" in text and "enforced" in text,
          f"enforced: a request cannot pick another weight file (HTTP {s})")

    for cfg in (0, 0.5):
        m = log_len(SPY)
        s, out, info, _ = txt2img(alwayson_scripts={KEY: {"args": [False, 0.0]}}, **LOW_CFG, cfg_scale=cfg)
        text = info["infotexts"][0] if info else str(out)
        steps = spied(m)
        check(s == 200 and "enforced" in text, f"enforced, CFG {cfg}, unsafe negative: sanitized (HTTP {s})")
        check(all_steps(steps, "uncond_raw", [False]) and all_steps(steps, "cond_raw", [False]),
              f"enforced, CFG {cfg}: no step reached the sampler with a raw negative or positive ({len(steps)} steps)")

    n, m = log_len(), log_len(SPY)
    s, out, info, _ = txt2img(**REFINER, cfg_scale=5)
    steps = spied(m)
    after = refiner_steps(steps)
    print(f"   refiner: HTTP {s}, {len(steps)} steps, {len(after)} after the switch; response: {str(out)[:200]}")
    check(s != 200 and "refused" in str(out), "enforced, refiner: refused")
    check(after and all("refused" in step for step in after) and not any(True in (step.get("cond_raw") or [])
                                                                         for step in steps),
          "enforced, refiner: the switch happened and no step after it reached the sampler")
    check(any(e["event"] == "refused" and e.get("stage") == "sampling step" for e in events(n)),
          "enforced, refiner: refusal logged at the sampling step")

elif PHASE in ("builtin", "builtin-enforced"):   # nothing in models/sanitizers: the built-in sanitizer
    what, request = ("enforced", {}) if PHASE == "builtin-enforced" else ("toggle on", on)
    m = log_len(SPY)
    s, out, info, _ = txt2img(**request, prompt="a photo of a nude woman on a beach", steps=2, batch_size=1)
    text = info["infotexts"][0]
    print("   infotext:", text.splitlines()[-1] if text else "")
    check(s == 200 and re.search(f'{KEY}: "?built-in \\(any text encoder\\), intensity 1.*erased tokens', text),
          f"built-in, {what}: generated, the infotext names the built-in sanitizer and the erased tokens")
    check(all_steps(spied(m), "cond_raw", [False]), f"built-in, {what}: the sampler never got the raw positive")
    m = log_len(SPY)
    s, out, info, _ = txt2img(**request, prompt="a red house by a lake", steps=2, batch_size=1)
    check(s == 200 and all_steps(spied(m), "cond_raw", [True]),
          f"built-in, {what}: a harmless prompt reached the sampler as encoded")
    m = log_len(SPY)
    s, out, info, _ = txt2img(**request, **LOW_CFG, cfg_scale=0)
    check(s == 200 and all_steps(spied(m), "uncond_raw", [False]),
          f"built-in, {what}: at CFG 0 the unsafe negative reached the sampler sanitized, read by its own text")

elif PHASE == "refuse":
    n = log_len()
    s, out, info, _ = txt2img(alwayson_scripts={KEY: {"args": [True, 1.0]}})
    print("   response:", str(out)[:300])
    check(s != 200 and "refused" in str(out), f"enforced + mismatching sanitizer pinned: refused (HTTP {s})")
    check(any(e["event"] == "refused" for e in events(n)), "refusal logged")

elif PHASE == "bare":
    s, out, info, _ = txt2img(**HIRES)
    check(s == 200 and KEY not in info["infotexts"][0], "without the extension: generates, no sanitizer infotext")

sys.exit(1 if check.failed else 0)
