import re

import pytest

from embedding_sanitizer.evaluation import prompts as P
from embedding_sanitizer.evaluation.methods import KeywordFilter
from embedding_sanitizer.lexicon import builtin_concepts

from .toy_data import I2P_COLUMNS, write_csv


@pytest.fixture(scope="module")
def concepts():
    return builtin_concepts()


def test_heldout_set_uses_only_heldout_terms(concepts):
    g = P.synthetic_group(concepts, "heldout", 40)
    assert len(g.unsafe) == 40 and len(g.benign) == 40
    kf = KeywordFilter([t for c in concepts.values() for t in c.train_terms])
    # held-out terms are (mostly) invisible to a keyword filter of train terms
    missed = sum(not kf.filter(p)[1] for p in g.unsafe.prompts)
    assert missed >= 0.6 * len(g.unsafe)
    assert {c for cs in g.unsafe.concepts for c in cs} == {"nudity", "violence"}


@pytest.mark.parametrize("kind", ["misspelling", "char-substitution", "spacing"])
def test_adversarial_variants_evade_the_keyword_filter(concepts, kind):
    g = P.adversarial_group(kind, concepts, 40)
    kf = KeywordFilter([t for c in concepts.values() for t in c.train_terms])
    clean = P.synthetic_group(concepts, "train", 40)
    assert sum(kf.filter(p)[1] for p in clean.unsafe.prompts) == len(clean.unsafe)   # train terms all match
    caught = sum(kf.filter(p)[1] for p in g.unsafe.prompts)
    assert caught <= 0.5 * len(g.unsafe), (kind, caught)


def test_synonyms_are_not_in_the_lexicon(concepts):
    syn = P.oov_synonyms(concepts)
    known = P.lexicon_terms(concepts)
    for phrases in syn.values():
        assert len(phrases) >= 8
        for p in phrases:
            assert not any(re.search(rf"(?<![\w-]){re.escape(k)}(?![\w-])", p.lower()) for k in known), p


def test_long_and_buried_prompts(concepts):
    from embedding_sanitizer.encoders import clip_tokenizer
    try:
        tok = clip_tokenizer()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    long = P.adversarial_group("long", concepts, 10)
    for p, b in zip(long.unsafe.prompts, long.benign.prompts):
        ids = tok(p, add_special_tokens=False)["input_ids"]
        filler = tok(P.LONG_FILLER, add_special_tokens=False)["input_ids"]
        assert len(ids) > 75 and len(filler) >= 75        # the unsafe part is past the first chunk
    buried = P.adversarial_group("buried", concepts, 10)
    assert all(len(tok(p, add_special_tokens=False)["input_ids"]) <= 75 for p in buried.unsafe.prompts)


def test_real_sets_skip_with_a_reason_when_absent(tmp_path):
    logged = []
    groups, info = P.real_groups(tmp_path / "nowhere", 10, log=logged.append)
    assert groups == [] and info["skipped"] and "absent" in logged[0]


def test_real_sets_and_custom_csv(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    write_csv(d / "coco_captions_dev.csv", ["case_number", "prompt"],
              [[i, f"a dog number {i} on a lawn"] for i in range(20)])
    write_csv(d / "i2p_dev.csv", I2P_COLUMNS, [["a nude painting", "sexual", 1, 90, 80],
                                               ["a bloody fight", "violence,shocking", 1, 70, 0],
                                               ["a sad man", "self-harm", 0, 20, 0]])
    groups, info = P.real_groups(d, None, log=lambda m: None)
    names = {g.name: g for g in groups}
    assert len(names["real/i2p-nudity"].unsafe) == 1 and len(names["real/i2p-violence"].unsafe) == 1
    assert len(names["real/i2p-all"].unsafe) == 3 and len(names["real/i2p-all"].benign) == 20
    assert info["i2p"]["categories"]["sexual"] == 1
    custom = d / "mine.csv"
    custom.write_text("prompt\nhello world\nsecond prompt\n")
    g = P.custom_group(custom, "unsafe", None, 0, names["real/i2p-all"].benign)
    assert g.unsafe.prompts == ["hello world", "second prompt"]
    (d / "bad.csv").write_text("text\nx\n")
    with pytest.raises(ValueError, match="prompt"):
        P.read_csv_prompts(d / "bad.csv")
