"""Command line: python -m embedding_sanitizer {demo,score,train,release,measure,eval} (see --help)."""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import shlex
import sys
import time

from . import validation
from .model import DEFAULT_THRESHOLD
from .paths import default_data_dir
from .train import TrainConfig


class CliError(Exception):
    """A problem with what the user asked for: printed as one 'error:' line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        """One line (argparse adds the whole usage), status 2 as argparse does."""
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


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
    from .encoders import encoder_for

    model = load_sanitizer(weights or default_weights_path(), device or "cpu")
    return model, encoder_for(model, encoder_spec, device)


# More than any list of prompts a person scores: a larger --file or stdin (/dev/zero, a
# disk image) is refused rather than read into memory without end.
MAX_INPUT_BYTES = 16 * 2 ** 20


def _read_prompts(args) -> list[str]:
    """The prompts to score: each argument, or the non-blank lines of --file / stdin."""
    if args.prompt:
        for number, prompt in enumerate(args.prompt, 1):
            what = "the prompt argument" if len(args.prompt) == 1 else f"prompt argument {number}"
            _check_text(prompt, what)
            if not prompt.strip():
                raise CliError(f"{what} is empty; pass some words in quotes, --file FILE, or lines on stdin")
        return [prompt.strip() for prompt in args.prompt]
    where = args.file or "stdin"
    try:
        if args.file:
            with open(args.file, "rb") as f:
                data = f.read(MAX_INPUT_BYTES + 1)
        else:
            stream = sys.stdin.buffer if hasattr(sys.stdin, "buffer") else None
            data = stream.read(MAX_INPUT_BYTES + 1) if stream else sys.stdin.read(MAX_INPUT_BYTES + 1).encode()
        if len(data) > MAX_INPUT_BYTES:
            raise CliError(f"{where} holds more than {MAX_INPUT_BYTES // 2 ** 20} MiB; split the prompts into "
                           f"smaller files")
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CliError(f"{where} is not UTF-8 text (byte {exc.start}); pass a text file of prompts, one per line")
    except OSError as exc:
        raise CliError(f"cannot read {where}: {exc.strerror or exc}")
    if "\0" in text:
        raise CliError(f"{where} holds binary data (NUL bytes); pass a text file of prompts, one per line")
    return [line.strip() for line in io.StringIO(text) if line.strip()]


def _unread_tokens(encoder, prompt: str) -> int:
    """How many of the prompt's tokens fall past the encoder's window, counted as the encoder
    truncates its token ids: a chunked encoder (CLIP) reads them all, 75 a chunk; the others read
    max_tokens with their specials. (The report's tokens are no measure: they leave out [UNK], an
    emoji's or a full-width letter's token, which the encoder does read.)"""
    if encoder.chunk_length:
        return 0
    return max(0, len(encoder.token_ids(prompt)) - (encoder.max_tokens - encoder.leading_specials - 1))


def _check_text(text: str, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise CliError(f"{what} is not valid UTF-8 text") from None


def cmd_score(args):
    from .report import colour_tokens, score_prompts

    prompts = _read_prompts(args)
    if not prompts:
        raise CliError("no prompt given (pass one as an argument, --file FILE, or lines on stdin)")
    if args.concepts is not None:
        _check_text(args.concepts, "--concepts")
    concepts = validation.concepts(args.concepts)
    model, encoder = _load(args.weights, args.encoder)
    validation.concepts(concepts, model.concepts)     # an unknown name fails before any encoding
    results = score_prompts(model, encoder, prompts, intensity=args.intensity,
                            threshold=args.threshold, concepts=concepts)
    colour = sys.stdout.isatty()
    for r in results:
        # Past the encoder's window the words are never scored: say so, never silently.
        dropped = _unread_tokens(encoder, r["prompt"])
        r["truncated"] = dropped > 0
        if dropped > 0:
            print(f"warning: the prompt is longer than the encoder's {encoder.max_tokens}-token window; its last "
                  f"{dropped} tokens were not scored: {r['prompt'][:60]}", file=sys.stderr)
        if args.json:
            print(json.dumps(r, allow_nan=False))
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
    for r in score_prompts(model, encoder, DEMO_PROMPTS, intensity=1.0):
        moved = 1 - r["cosine"]
        print(f"\n{r['prompt']}\n  prompt score {r['prompt_score']:.2f} | erased tokens "
              f"{r['erased_tokens']} | embedding moved {moved:.4f} (1 - cosine)\n  "
              f"{colour_tokens(r['tokens'], colour)}")
    print(f"\ndone in {time.time() - started:.1f} s, no network, device cpu")


def cmd_train(args):
    from . import save_sanitizer
    from .encoders import load_encoder
    from .lexicon import builtin_concepts, load_concepts_file
    from .train import check_training, summary_text, train_sanitizer
    from .weights import check_writable

    # Everything is checked before the encoder loads: encoding and training take tens of minutes.
    if os.path.lexists(args.out) and not os.path.isdir(args.out) and not args.force:
        raise CliError(f"{args.out} exists; pass --force to replace it, or another --out")
    check_writable(args.out)
    builtin = builtin_concepts()
    names = list(validation.concepts(args.concepts) or ())
    unknown = [n for n in names if n not in builtin]
    if unknown:
        raise CliError(f"unknown built-in concept(s) {unknown}; built-in: {sorted(builtin)}")
    concepts = [builtin[n] for n in names]
    if args.concepts_file:
        concepts += load_concepts_file(args.concepts_file)
    if not concepts:
        concepts = list(builtin.values())
    config = TrainConfig(steps=args.steps, seed=args.seed, device=args.device).scaled(args.pairs, concepts)
    if args.benign is not None:
        config = dataclasses.replace(config, benign=args.benign)
    check_training(concepts, config)
    encoder = load_encoder(args.encoder, args.device)
    model, summary = train_sanitizer(encoder, concepts, config)
    summary["command"] = args.command_line
    out = save_sanitizer(model, args.out, summary, overwrite=args.force)
    print(f"\nSaved {out} ({out.stat().st_size / 1e6:.1f} MB, {model.parameter_count():,} parameters).\n"
          f"{summary_text(summary)}")


def cmd_release(args):
    from .release import read_recipe, release

    encoders = {}
    for item in args.encoder:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise CliError(f"--encoder takes NAME=PATH (a name of the recipe), got {item!r:.80}")
        encoders[name] = path
    only = [name.strip() for name in args.only.split(",") if name.strip()] if args.only else None
    release(read_recipe(args.recipe), args.out, encoders, only, args.force, args.device,
            command=args.command_line)


def cmd_measure(args):
    from .measure import measure

    model, encoder = _load(args.weights, args.encoder)
    print(measure(model, encoder, data_dir=args.data_dir, threshold=args.threshold, n_synth=args.n_synth,
                  limit=args.limit or None, log=lambda line: print(line, file=sys.stderr)))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m embedding_sanitizer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p):
        p.add_argument("--weights", help="sanitizer weight file (default: the embedded MiniLM sanitizer)")
        p.add_argument("--encoder", help="text encoder: a checkpoint/CLIP .safetensors, a diffusers folder, "
                                         "clip_l.safetensors,clip_g.safetensors (SDXL), "
                                         "clip_l.safetensors,clip_g.safetensors,t5xxl.safetensors (SD3) or "
                                         "clip_l.safetensors,t5xxl.safetensors (Flux; T5 needs "
                                         "EMBEDDING_SANITIZER_T5_TOKENIZER) (default: embedded MiniLM)")

    p = sub.add_parser("demo", help="score a handful of prompts with the embedded default")
    p.add_argument("--weights", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("score", help="per-token scores for prompts (arguments, --file, or stdin)")
    common(p)
    p.add_argument("prompt", nargs="*",
                   help="prompts, each scored on its own: quote one of several words, as in "
                        "score \"a cat\" \"a dog\" (omit to read --file or stdin, one per line)")
    p.add_argument("--file", help=f"read prompts from this file, one per line (at most "
                                  f"{MAX_INPUT_BYTES // 2 ** 20} MiB, as for stdin)")
    p.add_argument("--json", action="store_true", help="one JSON object per prompt per line")
    p.add_argument("--intensity", type=validation.argument(validation.intensity), default=1.0,
                   help=f"0 (off) to {validation.MAX_INTENSITY:g}; 1 = as trained")
    p.add_argument("--threshold", type=validation.argument(validation.threshold), default=DEFAULT_THRESHOLD,
                   help=f"0 to 1: tokens scoring below this are left untouched (default {DEFAULT_THRESHOLD:g})")
    p.add_argument("--concepts", help="comma-separated concepts to erase (default: all)")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("train", help="train a sanitizer for a text encoder")
    p.add_argument("--encoder", help="as for score (default: embedded MiniLM)")
    p.add_argument("--concepts", help="built-in concepts, comma-separated (default: all built-in)")
    p.add_argument("--concepts-file", help="JSON file of your own concepts (terms, anchors)")
    p.add_argument("--steps", type=int, default=TrainConfig.steps)
    p.add_argument("--pairs", type=int, default=TrainConfig.pairs_per_concept, help="unsafe/anchor pairs per concept; the rest of the corpus scales with it")
    p.add_argument("--benign", type=int, default=None,
                   help=f"synthetic and real benign prompts (default: {TrainConfig.benign} at the default --pairs, "
                        f"in proportion otherwise)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--out", required=True, help="where to write the .safetensors weight file")
    p.add_argument("--force", action="store_true", help="replace the --out file if it exists")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("release", help="train the released sanitizers of a recipe, each with a model card")
    p.add_argument("--recipe", default="tools/release.json", help="the JSON recipe (default: tools/release.json)")
    p.add_argument("--out", required=True, help="folder for the weight files and their cards")
    p.add_argument("--encoder", action="append", default=[], metavar="NAME=PATH",
                   help="the text encoder of the recipe's sanitizer NAME (repeat per sanitizer)")
    p.add_argument("--only", help="comma-separated sanitizer names to train (default: all of the recipe)")
    p.add_argument("--force", action="store_true", help="replace existing weight files and cards")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.set_defaults(func=cmd_release)

    p = sub.add_parser("measure", help="held-out and real-prompt-set figures for a sanitizer")
    common(p)
    p.add_argument("--data-dir", default=str(default_data_dir()),
                   help="folder with i2p_dev.csv and coco_captions_dev.csv (validation part is used)")
    p.add_argument("--n-synth", type=int, default=200, help="prompts per synthetic and adversarial set")
    p.add_argument("--limit", type=int, default=0, help="at most this many prompts per real set (0 = all)")
    p.add_argument("--threshold", type=validation.argument(validation.threshold), default=DEFAULT_THRESHOLD,
                   help="score threshold to measure at")
    p.set_defaults(func=cmd_measure)

    sub.add_parser("eval", add_help=False,
                   help="compare with a keyword filter and SAFREE; writes a report and plots (eval --help)")
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["eval"]:     # the harness parses its own, longer, argument list
        from .evaluation.run import main as eval_main
        raise SystemExit(eval_main(argv[1:]))
    args = build_parser().parse_args(argv)
    args.command_line = shlex.join(["python", "-m", "embedding_sanitizer", *argv])    # recorded in what it trains
    try:
        args.func(args)
    except (CliError, ValueError, OSError) as exc:   # WeightFileError and InvalidValue are ValueErrors
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if isinstance(exc, OSError) and exc.strerror:
            message = f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
        print(f"error: {message}".encode("utf-8", "backslashreplace").decode("utf-8"), file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
