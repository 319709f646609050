"""The hosts import the engine from the pack folder without leaving that folder on sys.path,
where its nodes/, scripts/, ... would shadow the host's own modules of those names."""

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_pack_imports_its_engine_and_restores_sys_path(monkeypatch):
    monkeypatch.setitem(sys.modules, "folder_paths", None)     # as outside ComfyUI, even after its tests
    spec = importlib.util.spec_from_file_location("pack_entry_under_test", ROOT / "__init__.py")
    pack = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pack)          # outside ComfyUI: no folder_paths, empty mappings
    assert pack.NODE_CLASS_MAPPINGS == {}
    path = [p for p in sys.path if Path(p or ".").resolve() != ROOT]
    monkeypatch.setattr(sys, "path", list(path))
    monkeypatch.delitem(sys.modules, "embedding_sanitizer", raising=False)
    pack._import_engine()
    assert sys.path == path
    assert Path(sys.modules["embedding_sanitizer"].__file__).parent == ROOT / "embedding_sanitizer"
