"""Operator mode's last line: where the switch is, and refusing every generation when the
pack cannot enforce it. Standard library and ComfyUI only, so that it still works when the
engine or the pack's nodes fail to import (ComfyUI swallows a pack's import error and samples
on without it; an operator who switched enforcement on must not get that).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Callable, Optional

ENV_VAR = "EMBEDDING_SANITIZER_OPERATOR_CONFIG"
CONFIG_NAME = "embedding_sanitizer_operator.json"
ROUTE = "/embedding_sanitizer/operator"
# The operator's own location, outside everything ComfyUI's process is meant to write; the
# operator makes it writable by root (or an administrator) only.
SYSTEM_CONFIG = (Path(os.environ.get("PROGRAMDATA", r"C:\ProgramData")) / "embedding-sanitizer" / "operator.json"
                 if os.name == "nt" else Path("/etc/embedding-sanitizer/operator.json"))
# The sampling entry points of every ComfyUI version this pack knows; refusing all of them stops
# every core sampler node and every guider.
SAMPLING_ENTRY_POINTS = ("sample", "sampling_function", "calc_cond_batch", "calc_cond_uncond_batch")

LOG = logging.getLogger("embedding_sanitizer")
_published: dict = {}          # the one function that answers the state route


def config_location() -> Optional[Path]:
    """The operator's configuration file, or None when the operator enforces nothing: the
    environment variable (set but missing still enforces, and refuses), else the system file,
    else the file in ComfyUI's user directory. A missing file there overrides nothing."""
    named = os.environ.get(ENV_VAR, "").strip()
    if named:
        return Path(named).expanduser()
    if SYSTEM_CONFIG.is_file():
        return SYSTEM_CONFIG
    import folder_paths
    getter = getattr(folder_paths, "get_user_directory", None)
    user_dir = getter() if getter else getattr(folder_paths, "user_directory", None)
    if user_dir and os.path.isfile(os.path.join(user_dir, CONFIG_NAME)):
        return Path(user_dir) / CONFIG_NAME
    return None


def publish_state(state: Callable[[], dict]) -> None:
    """Serve `state()` at ROUTE; a later call replaces the answer (the route is added once:
    aiohttp refuses a second one for the same path)."""
    first = not _published
    _published["state"] = state
    server = getattr(getattr(sys.modules.get("server"), "PromptServer", None), "instance", None)
    if not first or server is None:
        return
    from aiohttp import web

    @server.routes.get(ROUTE)
    async def operator_state(request):
        return web.json_response(_published["state"]())


def refuse_every_generation(reason: str) -> None:
    """Make every sampling entry point of this ComfyUI raise `reason`, log it, and have the state
    route say so. For when enforcement is switched on and the pack cannot enforce it."""
    import comfy.samplers
    # The reason may hold server paths: it goes to the log, the client gets this line.
    message = ("Embedding Sanitizer (operator mode) refused to sample: enforcement is switched on and the "
               "pack could not start (details in the server log)")

    def refuse(*args, **kwargs):
        raise RuntimeError(message)

    for name in SAMPLING_ENTRY_POINTS:
        if callable(getattr(comfy.samplers, name, None)):
            setattr(comfy.samplers, name, refuse)
    guider = getattr(comfy.samplers, "CFGGuider", None)
    if guider is not None:
        guider.sample = refuse
    LOG.critical("Embedding Sanitizer (operator mode): %s. Every generation is refused until this is fixed "
                 "and ComfyUI restarts.", reason)
    publish_state(lambda: {"enforced": True, "ready": False,
                           "problem": "operator mode could not start; every prompt is refused (details in the server log)"})


def fail_closed_if_switched_on(error: BaseException) -> None:
    """The pack failed to load: refuse every generation if the operator switched enforcement on."""
    try:
        switched_on = config_location() is not None
    except Exception:     # noqa: BLE001  cannot even tell: the safe answer is that it is on
        switched_on = True
    if switched_on:
        refuse_every_generation(f"the Embedding Sanitizer pack failed to load ({type(error).__name__}: {error})")
