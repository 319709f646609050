import pytest

from embedding_sanitizer.evaluation.methods import EncodingCache
from embedding_sanitizer.evaluation.toy import ToyEncoder


@pytest.fixture
def toy():
    return ToyEncoder(embed_dim=32)


@pytest.fixture
def cache(toy):
    return EncodingCache(toy)
