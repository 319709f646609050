"""The webui stand-in shared by the A1111 script tests: `modules` and `gradio` look-alikes,
the script loaded from scripts/sanitizer_script.py, and two sanitizer files."""

import importlib.util
import shutil
import sys
import types
from pathlib import Path

import pytest

from embedding_sanitizer import save_sanitizer

from .test_webui_adapter import active_model

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "sanitizer_script.py"


class Opts(types.SimpleNamespace):
    def add_option(self, key, info):
        setattr(self, key, info.default)
        self.infos = {**getattr(self, "infos", {}), key: info}


class OptionInfo(types.SimpleNamespace):
    def __init__(self, default=None, label="", *args, **kwargs):
        super().__init__(default=default, label=label, kw=kwargs, comment="")

    def info(self, text):
        self.comment = text
        return self


@pytest.fixture(scope="session")
def sanitizer_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sanitizers")
    save_sanitizer(active_model(), folder / "sd1.safetensors", {"note": "test"})
    sdxl = active_model(dim=2048, pooled=1280, family="sdxl-clip-lg")
    save_sanitizer(sdxl, folder / "xl.safetensors", {"note": "test"})
    return folder


@pytest.fixture()
def host(tmp_path, monkeypatch, sanitizer_files):
    class Script:
        def process_before_every_sampling(self, p, *args, **kwargs):
            pass

    callbacks = {}
    reg = lambda name: (lambda fn: callbacks.setdefault(name, fn))  # noqa: E731
    modules = types.ModuleType("modules")
    modules.scripts = types.SimpleNamespace(Script=Script, AlwaysVisible=object())
    modules.script_callbacks = types.SimpleNamespace(on_ui_settings=reg("ui_settings"),
                                                     on_infotext_pasted=reg("pasted"),
                                                     on_model_loaded=reg("model_loaded"),
                                                     on_cfg_denoiser=reg("cfg_denoiser"))
    modules.shared = types.SimpleNamespace(opts=Opts(), sd_model=types.SimpleNamespace(is_sdxl=False, is_sd2=False,
                                                                                     is_sd1=True),
                                           OptionInfo=OptionInfo)
    paths = types.ModuleType("modules.paths")
    paths.models_path = str(tmp_path)
    for name, mod in {"modules": modules, "modules.scripts": modules.scripts,
                      "modules.script_callbacks": modules.script_callbacks, "modules.shared": modules.shared,
                      "modules.paths": paths,
                      "gradio": types.SimpleNamespace(Slider="Slider", Dropdown="Dropdown")}.items():
        monkeypatch.setitem(sys.modules, name, mod)
    spec = importlib.util.spec_from_file_location("es_script_under_test", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    callbacks["ui_settings"]()
    for file in sanitizer_files.iterdir():
        shutil.copy(file, tmp_path / "sanitizers" / file.name)
    return types.SimpleNamespace(mod=mod, opts=modules.shared.opts, callbacks=callbacks, dir=tmp_path / "sanitizers")


