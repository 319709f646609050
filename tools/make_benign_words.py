"""Writes embedding_sanitizer/data/benign_words.txt: everyday words for benign training prompts.

Real prompts use thousands of words the lexicon's templates never show; a
sanitizer that has only seen those templates flags unfamiliar words. The list
is the commonest whole words of the CLIP BPE vocabulary (open-clip-torch),
minus every word of the lexicon's terms and anything containing an unsafe root.

    python tools/make_benign_words.py
"""

import gzip
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from embedding_sanitizer.encoders import _package_dir  # noqa: E402
from embedding_sanitizer.lexicon import builtin_concepts  # noqa: E402

COUNT = 20000
UNSAFE_ROOTS = (
    "sex", "porn", "nud", "nak", "nekk", "nipp", "breast", "boob", "tit", "genit", "penis", "vagin", "pussy",
    "dick", "cock", "erot", "strip", "lewd", "smut", "xxx", "nsfw", "bikini", "lingerie", "thong", "topless",
    "bottomless", "horny", "fuck", "slut", "whore", "hentai", "fetish", "bdsm", "orgasm", "orgy", "milf",
    "butt", "ass", "anal", "cum", "rape", "molest", "incest", "kill", "murd", "blood", "bleed", "gore", "gory",
    "dead", "death", "die", "corps", "cadav", "tortur", "stab", "shoot", "shot", "gun", "rifle", "pistol",
    "weapon", "knife", "blade", "sword", "wound", "slaught", "massac", "execu", "behead", "decap", "dismem",
    "mutil", "suicid", "hang", "lynch", "abus", "violen", "war", "bomb", "explo", "terror", "assault",
    "attack", "fight", "beat", "slay", "slain", "butch", "gut", "entrail", "injur", "hurt", "pain", "skull",
    "bone", "zombie", "horror", "demon", "satan", "hell", "drug", "cocaine", "heroin", "meth", "weed",
    "burn", "fire", "flame", "corpse", "carnage", "victim", "crime", "prison", "hostage", "riot", "brutal",
    "savage", "maim", "evisc", "impal", "skewer", "bludg", "homicid", "naz", "hate", "racis", "slave",
)


def words_of_terms() -> set[str]:
    found = set()
    for concept in builtin_concepts().values():
        for phrase in concept.train_terms + concept.heldout_terms:
            found.update(re.findall(r"[a-z]+", phrase.lower()))
    return found


def main():
    vocab = _package_dir("open_clip", "pip install --no-deps open-clip-torch") / "bpe_simple_vocab_16e6.txt.gz"
    merges = gzip.open(vocab).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    banned = words_of_terms()
    words = []
    for merge in merges:       # merges come in frequency order
        word = "".join(merge.split())
        if not word.endswith("</w>"):
            continue
        word = word[:-4]
        if (re.fullmatch(r"[a-z]{3,12}", word) and word not in banned
                and not any(root in word for root in UNSAFE_ROOTS)):
            words.append(word)
    words = list(dict.fromkeys(words))[:COUNT]
    out = ROOT / "embedding_sanitizer" / "data" / "benign_words.txt"
    out.write_text("\n".join(words) + "\n")
    print(f"wrote {len(words)} words to {out}")


if __name__ == "__main__":
    main()
