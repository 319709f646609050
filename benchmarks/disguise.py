"""Time to read hostile prompts through their disguises (embedding_sanitizer.disguise.undisguise).

    python benchmarks/disguise.py                  # 1k, 10k and 100k characters
    python benchmarks/disguise.py --sizes 1000,1000000

Every host reads every prompt this way before encoding it, so its time must grow linearly
with the prompt's length: one long prompt must not stall a shared server. Prints, for each
hostile pattern, the median time at each length and the ratio of the longest time to the
shortest against the ratio of the lengths (linear: about equal; quadratic: its square).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from embedding_sanitizer.disguise import undisguise  # noqa: E402

# Each piece is repeated to the length asked for.
HOSTILE = {
    "exclamation marks": "!",
    "look-alike words": "h3ll0 ",
    "dotted runs": "a.b.c ",
    "spaced letters": "x ",
    "unknown words": "qwzrtplk ",
    "misspellings": "nakde ",
}


def median_seconds(text: str, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        undisguise(text)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1000,10000,100000", help="prompt lengths in characters, comma-separated")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    undisguise("warm up the word lists")
    print(f"{'pattern':<18}" + "".join(f"{n:>12,} ch" for n in sizes) + f"   time ratio (length ratio {sizes[-1] / sizes[0]:g})")
    for name, piece in HOSTILE.items():
        seconds = [median_seconds((piece * (n // len(piece) + 1))[:n], args.repeats) for n in sizes]
        print(f"{name:<18}" + "".join(f"{1000 * s:>12.2f} ms" for s in seconds) + f"   {seconds[-1] / seconds[0]:10.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
