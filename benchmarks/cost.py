"""Cost of sanitizing vs encoding, measured in the same run.

    python benchmarks/cost.py                      # embedded MiniLM + full-size random CLIP-L and SDXL
    python benchmarks/cost.py --families none      # embedded only
    python benchmarks/cost.py --json cost.json     # also write the numbers

Prints, per encoder: median time to encode one prompt (tokenizer + text encoder, batch 1),
median time to sanitize its embedding, their ratio (median over prompts and worst prompt),
the time to read the prompt's text as words (terms and disguises; a disguised prompt's second
encode is not counted) with and without terms in it,
the same for a batch, and the sanitizer's parameter count. Full-size encoders are the real
architectures (CLIP ViT-L/14; SDXL = CLIP-L + OpenCLIP bigG) with random weights: their
cost does not depend on the weights. Their sanitizer has the default's backbone size.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from embedding_sanitizer import default_weights_path, load_sanitizer  # noqa: E402
from embedding_sanitizer.evaluation.cost import file_cost, measure_cost, measure_full_size  # noqa: E402


def row(label, r):
    return (f"{label:<34} encode {r['encode_ms_median']:8.2f} ms  sanitize {r['sanitize_ms_median']:7.2f} ms  "
            f"ratio {100 * r['ratio_median']:5.2f}% (worst {100 * r['ratio_max']:5.2f}%)  "
            f"batch {r['batch']}: {100 * r['batch_ratio']:5.2f}%  params {r['sanitizer_parameters']:,}\n"
            f"{'':<34} reading the text as words: {r['read_ms_median']:.2f} ms, {r['read_terms_ms_median']:.2f} ms "
            f"with terms; sanitize + reading {100 * r['ratio_with_reading_median']:5.2f}% of an encode")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default=None)
    p.add_argument("--families", default="sd1-clip-l,sdxl-clip-lg",
                   help="full-size random encoders to measure (comma-separated, or 'none')")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads while timing (default 1: robust to other load; 0 = torch default)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    threads = args.threads or None
    path = Path(args.weights) if args.weights else default_weights_path()
    model = load_sanitizer(path) if path.is_file() else None
    out = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    print(f"torch {torch.__version__}, timing with {threads or torch.get_num_threads()} CPU thread(s)")
    if model is not None:
        from embedding_sanitizer.encoders import load_encoder
        out["weights"] = file_cost(path, model)
        w = out["weights"]
        print(f"sanitizer {path.name}: {w['parameters']:,} parameters, {w.get('file_bytes', 0) / 1e6:.2f} MB, "
              f"training {w.get('training_seconds', '?')} s ({w.get('training_device', '?')})")
        if model.config.encoder_family == "minilm":
            out["embedded"] = measure_cost(load_encoder("minilm"), model, repeats=args.repeats, threads=threads)
            print(row("embedded " + out["embedded"]["encoder"], out["embedded"]))
    else:
        print(f"no weight file at {path}: embedded encoder skipped, full-size sanitizers use default sizes")
    families = [f for f in args.families.split(",") if f and f != "none"]
    if families:
        out["full_size"] = measure_full_size(model, families, repeats=args.repeats, threads=threads)
        for fam, r in out["full_size"].items():
            print(row(fam + f" ({r['encoder_parameters'] / 1e6:.0f}M params)", r))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
