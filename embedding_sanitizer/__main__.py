"""Command line: python -m embedding_sanitizer {demo,score,train,measure,eval} (see --help)."""

from __future__ import annotations

import argparse
import json
import sys
import time

from .model import DEFAULT_THRESHOLD
from .paths import default_data_dir
from .train import TrainConfig

DEMO_PROMPTS = (
    "a photo of a cat sitting on a windowsill",
    "portrait of a young woman in a red dress, oil painting",
    "a nude woman lying on a bed, photorealistic",
    "a knight on a battlefield, decapitated bodies everywhere, gore",
    "a naked man at the beach, 8k",
    "two friends having a picnic in the park",
)


def _load(weights, encoder_spec, device=None):
    from . import default_weights_path, load_sanitizer
    from .encoders import load_encoder

    model = load_sanitizer(weights or default_weights_path(), device or "cpu")
    family = model.config.encoder_family
    if encoder_spec is None and family != "minilm":
        raise SystemExit(f"error: these weights were trained for a {family} encoder "
                         f"({model.config.encoder_name}); pass its checkpoint with --encoder FILE")
    encoder = load_encoder(encoder_spec, device)
    if encoder.family != family or encoder.embed_dim != model.config.embed_dim:
        raise SystemExit(f"error: the sanitizer was trained for {family} (D={model.config.embed_dim}) "
                         f"but --encoder is {encoder.family} (D={encoder.embed_dim})")
    return model, encoder


def _read_prompts(args) -> list[str]:
    if args.prompt:
        return [" ".join(args.prompt)]
    source = open(args.file, encoding="utf-8") if args.file else sys.stdin
    with source:
        return [line.strip() for line in source if line.strip()]


def cmd_score(args):
    from .report import colour_tokens, score_prompts

    model, encoder = _load(args.weights, args.encoder)
    prompts = _read_prompts(args)
    if not prompts:
        raise SystemExit("error: no prompt given (pass one as an argument, --file FILE, or lines on stdin)")
    concepts = args.concepts.split(",") if args.concepts else None
    results = score_prompts(model, encoder, prompts, intensity=args.intensity,
                            threshold=args.threshold, concepts=concepts)
    colour = sys.stdout.isatty()
    for r in results:
        if args.json:
            print(json.dumps(r))
        else:
            print(f"{r['prompt_score']:.3f}  cos {r['cosine']:.4f}  {colour_tokens(r['tokens'], colour)}")


def cmd_demo(args):
    from .report import colour_tokens, score_prompts

    started = time.time()
    model, encoder = _load(args.weights, None)
    info = model.metadata.get("training", {}).get("heldout", {})
    print(f"Embedding Sanitizer demo: {model.config.encoder_name}, concepts {', '.join(model.concepts)}; "
          f"held-out AUROC {info.get('auroc', '?')}")
    colour = sys.stdout.isatty()
    for intensity in (1.0,):
        for r in score_prompts(model, encoder, DEMO_PROMPTS, intensity=intensity):
            moved = 1 - r["cosine"]
            print(f"\n{r['prompt']}\n  prompt score {r['prompt_score']:.2f} | erased tokens "
                  f"{r['erased_tokens']} | embedding moved {moved:.4f} (1 - cosine)\n  "
                  f"{colour_tokens(r['tokens'], colour)}")
    print(f"\ndone in {time.time() - started:.1f} s, no network, device cpu")


def cmd_train(args):
    from . import save_sanitizer
    from .encoders import load_encoder
    from .lexicon import builtin_concepts, load_concepts_file
    from .train import train_sanitizer

    builtin = builtin_concepts()
    names = [n for n in (args.concepts or "").split(",") if n]
    unknown = [n for n in names if n not in builtin]
    if unknown:
        raise SystemExit(f"error: unknown built-in concept(s) {unknown}; built-in: {sorted(builtin)}")
    concepts = [builtin[n] for n in names]
    if args.concepts_file:
        concepts += load_concepts_file(args.concepts_file)
    if not concepts:
        concepts = list(builtin.values())
    encoder = load_encoder(args.encoder, args.device)
    config = TrainConfig(steps=args.steps, seed=args.seed, device=args.device,
                         pairs_per_concept=args.pairs, benign=args.benign)
    model, summary = train_sanitizer(encoder, concepts, config)
    summary["command"] = "python -m embedding_sanitizer " + " ".join(sys.argv[1:])
    out = save_sanitizer(model, args.out, summary)
    h = summary["heldout"]
    print(f"\nsaved {out} ({out.stat().st_size / 1e6:.1f} MB, {model.parameter_count():,} parameters, "
          f"{summary['train_seconds']} s)\n"
          f"held-out terms: AUROC {h.get('auroc')}, TPR@1%FPR {h.get('tpr_at_1pct_fpr')}; benign prompts: "
          f"cosine {h.get('benign_cosine_mean')}, gated share {h.get('benign_gated_share')}")
    for warning in summary["warnings"]:
        print(f"warning: {warning}")


def cmd_measure(args):
    from .measure import measure

    model, encoder = _load(args.weights, args.encoder)
    print(measure(model, encoder, data_dir=args.data_dir, threshold=args.threshold, n_synth=args.n_synth,
                  limit=args.limit or None, log=lambda line: print(line, file=sys.stderr)))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["eval"]:     # the harness parses its own, longer, argument list
        from .evaluation.run import main as eval_main
        raise SystemExit(eval_main(argv[1:]))
    parser = argparse.ArgumentParser(prog="python -m embedding_sanitizer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p):
        p.add_argument("--weights", help="sanitizer weight file (default: the embedded MiniLM sanitizer)")
        p.add_argument("--encoder", help="text encoder: a checkpoint/CLIP .safetensors, a diffusers folder, "
                                         "or clip_l.safetensors,clip_g.safetensors (default: embedded MiniLM)")

    p = sub.add_parser("demo", help="score a handful of prompts with the embedded default")
    p.add_argument("--weights", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("score", help="per-token scores for prompts (argument, --file, or stdin)")
    common(p)
    p.add_argument("prompt", nargs="*", help="the prompt (omit to read --file or stdin, one per line)")
    p.add_argument("--file", help="read prompts from this file, one per line")
    p.add_argument("--json", action="store_true", help="one JSON object per prompt per line")
    p.add_argument("--intensity", type=float, default=1.0)
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                   help=f"tokens scoring below this are left untouched (default {DEFAULT_THRESHOLD:g})")
    p.add_argument("--concepts", help="comma-separated concepts to erase (default: all)")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("train", help="train a sanitizer for a text encoder")
    p.add_argument("--encoder", help="as for score (default: embedded MiniLM)")
    p.add_argument("--concepts", help="built-in concepts, comma-separated (default: all built-in)")
    p.add_argument("--concepts-file", help="JSON file of your own concepts (terms, anchors)")
    p.add_argument("--steps", type=int, default=TrainConfig.steps)
    p.add_argument("--pairs", type=int, default=TrainConfig.pairs_per_concept, help="unsafe/anchor pairs per concept")
    p.add_argument("--benign", type=int, default=TrainConfig.benign, help="synthetic and real benign prompts")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--out", required=True, help="where to write the .safetensors weight file")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("measure", help="held-out and real-prompt-set figures for a sanitizer")
    common(p)
    p.add_argument("--data-dir", default=str(default_data_dir()),
                   help="folder with i2p_dev.csv and coco_captions_dev.csv (validation part is used)")
    p.add_argument("--n-synth", type=int, default=200, help="prompts per synthetic and adversarial set")
    p.add_argument("--limit", type=int, default=0, help="at most this many prompts per real set (0 = all)")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD, help="score threshold to measure at")
    p.set_defaults(func=cmd_measure)

    sub.add_parser("eval", add_help=False,
                   help="compare with a keyword filter and SAFREE; writes a report and plots (eval --help)")

    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError) as exc:
        raise SystemExit(f"error: {exc}") from None


if __name__ == "__main__":
    main()
