"""Writes embedding_sanitizer/data/benign_words.txt: everyday words for benign training prompts.

Real prompts use thousands of words the lexicon's templates never show; a
sanitizer that has only seen those templates flags unfamiliar words. The list
is the commonest whole words of the CLIP BPE vocabulary (open-clip-torch, read through
encoders.clip_tokenizer, whose ids follow the merges in frequency order),
minus every word of the lexicon's terms and anything containing an unsafe root.

    python tools/make_benign_words.py
"""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from embedding_sanitizer.corpus import DATA_DIR  # noqa: E402
from embedding_sanitizer.encoders import clip_tokenizer  # noqa: E402
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
    vocab = clip_tokenizer().get_vocab()
    banned = words_of_terms()
    words = []
    for word in sorted(vocab, key=vocab.get):       # commonest merges first
        if not word.endswith("</w>"):
            continue
        word = word[:-4]
        if (re.fullmatch(r"[a-z]{3,12}", word) and word not in banned
                and not any(root in word for root in UNSAFE_ROOTS)):
            words.append(word)
    words = list(dict.fromkeys(words))[:COUNT]
    out = DATA_DIR / "benign_words.txt"     # where corpus.everyday_words reads it
    out.write_text("\n".join(words) + "\n")
    print(f"wrote {len(words)} words to {out}")


if __name__ == "__main__":
    main()
