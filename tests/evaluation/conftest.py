import pytest

from embedding_sanitizer.evaluation.methods import EncodingCache
from .toy_data import ToyEncoder


@pytest.fixture
def toy():
    return ToyEncoder(embed_dim=32)


@pytest.fixture
def cache(toy):
    return EncodingCache(toy)
