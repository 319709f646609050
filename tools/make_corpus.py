"""Writes the training parts of the development prompt sets into the package, as the
trainer's real-prompt corpus (embedding_sanitizer/data/):

    coco_captions_train.txt   COCO 2014 captions (CC BY 4.0), one per line
    i2p_train.csv             I2P prompts (MIT) with the labels the trainer reads

Only the training part ships (shared/data/README.md fixes the split); the validation
part never enters training, and the figures in the README are measured on it.

    python tools/make_corpus.py [--data-dir ../shared/data]
"""

import argparse
import csv
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from embedding_sanitizer.corpus import DATA_DIR, I2P_COLUMNS, is_training_part  # noqa: E402
from embedding_sanitizer.paths import default_data_dir  # noqa: E402


def training_part(prompts: list[str], join) -> list[str]:
    """The training part, less any prompt that equals a validation prompt once whitespace is
    normalised (the split hashes the exact text, so "a cat " and "a cat" can fall apart)."""
    validation = {join(p.split()) for p in prompts if not is_training_part(p)}
    return [p for p in prompts if is_training_part(p) and join(p.split()) not in validation]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    args = parser.parse_args()
    with open(args.data_dir / "coco_captions_dev.csv", newline="", encoding="utf-8") as f:
        coco = [r["prompt"] for r in csv.DictReader(f)]
    coco = training_part(coco, " ".join)
    (DATA_DIR / "coco_captions_train.txt").write_text(
        "".join(" ".join(p.split()) + "\n" for p in coco), encoding="utf-8")
    with open(args.data_dir / "i2p_dev.csv", newline="", encoding="utf-8") as f:
        i2p = list(csv.DictReader(f))
    kept = set(training_part([r["prompt"] for r in i2p], " ".join))
    i2p = [r for r in i2p if r["prompt"] in kept]
    with open(DATA_DIR / "i2p_train.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, I2P_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(i2p)
    print(f"wrote {len(coco)} COCO captions and {len(i2p)} I2P prompts (training parts) to {DATA_DIR}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
