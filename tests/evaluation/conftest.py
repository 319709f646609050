import pytest

from sanitizer.evaluation.methods import EncodingCache
from sanitizer.evaluation.toy import ToyEncoder


@pytest.fixture
def toy():
    return ToyEncoder(embed_dim=32)


@pytest.fixture
def cache(toy):
    return EncodingCache(toy)
