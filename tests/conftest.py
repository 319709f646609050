import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def minilm():
    from embedding_sanitizer.encoders import MiniLMEncoder
    return MiniLMEncoder("cpu")


@pytest.fixture(scope="session")
def default_model():
    from embedding_sanitizer import default_weights_path, load_sanitizer
    return load_sanitizer(default_weights_path())
