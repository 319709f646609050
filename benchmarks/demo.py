"""How long `python -m embedding_sanitizer demo` takes, offline, beside Python's own start-up with
torch imported, measured in the same run (this machine's load moves both alike).

    python benchmarks/demo.py [--repeats N]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PATH": "/usr/bin:/bin", "CUDA_VISIBLE_DEVICES": ""}


def wall(args) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=ROOT, env=OFFLINE, check=True, capture_output=True)
    return time.perf_counter() - started


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    demo, baseline = [], []
    for _ in range(args.repeats):          # interleaved, so both see the same load
        baseline.append(wall(["-c", "import torch"]))
        demo.append(wall(["-m", "embedding_sanitizer", "demo"]))
    d, b = statistics.median(demo), statistics.median(baseline)
    print(f"demo {d:.1f} s (median of {args.repeats}), python + import torch {b:.1f} s, ratio {d / b:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
