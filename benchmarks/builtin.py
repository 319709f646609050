"""The built-in sanitizer against the trained one, on the embedded MiniLM as the stand-in host encoder.

    python benchmarks/builtin.py                 # 20 prompts per unsafe set, 100 COCO captions
    python benchmarks/builtin.py --n 50 --coco 500

Both run on the same prompts, as the hosts run them where they have the text (disguises read
plainly): the trained path is disguise.sanitize_texts with the embedded file; the built-in path
encodes the prompt with MiniLM as a host would and hands it to BuiltinSanitizer.sanitize with
MiniLM as the host encoder (so it judges with the same file and erases through the anchor text).
Per set it prints the share of prompts whose embedding changed (not bit-identical), the share
touched (any gate above metrics.TOUCHED_GATE), the mean cosine of the sanitized embedding to the
original, and, for unsafe sets, the share an independent probe still judges unsafe before and after
(the harness's erasure probe: logistic regression on sentence vectors of original embeddings of its
own synthetic prompts, probe.LogisticProbe). Then the cost per prompt: sanitizing alone (the
prompt's own encode excluded), for prompts with and without a flagged span. Sets come from the
evaluation harness (embedding_sanitizer/evaluation/prompts.py): I2P nudity >= 50 (validation part
of ../shared/data), three adversarial kinds, COCO captions; without ../shared/data it says so and
runs the adversarial sets only.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from embedding_sanitizer import default_weights_path, load_sanitizer  # noqa: E402
from embedding_sanitizer.builtin import BuiltinSanitizer  # noqa: E402
from embedding_sanitizer.disguise import sanitize_texts  # noqa: E402
from embedding_sanitizer.encoders import MiniLMEncoder  # noqa: E402
from embedding_sanitizer.evaluation.prompts import (adversarial_group, probe_training_prompts,  # noqa: E402
                                                    real_groups)
from embedding_sanitizer.lexicon import builtin_concepts  # noqa: E402
from embedding_sanitizer.metrics import TOUCHED_GATE, embedding_cosine  # noqa: E402
from embedding_sanitizer.model import sentence_vector  # noqa: E402
from embedding_sanitizer.probe import LogisticProbe  # noqa: E402

ADVERSARIAL = ("misspelling", "spacing", "char-substitution")


def run_prompt(method: str, judge, builtin, encoder, prompt: str, settings: dict):
    """(original, sanitized SanitizeResult, the encoding, seconds spent sanitizing)."""
    if method == "trained":
        start = time.perf_counter()
        encoded, result = sanitize_texts(judge, encoder, [prompt], **settings)
        spent = time.perf_counter() - start
        # sanitize_texts encodes the prompt itself: take that encode out, as for the built-in path
        start = time.perf_counter()
        encoder.encode([prompt])
        return encoded, result, spent - (time.perf_counter() - start)
    encoded = encoder.encode([prompt])
    start = time.perf_counter()
    result = builtin.sanitize(encoded.embedding, encoded.pooled, text=prompt, encoder=encoder,
                              attention_mask=encoded.attention_mask, **settings)
    return encoded, result, time.perf_counter() - start


def measure(method, judge, builtin, encoder, prompts, settings, probe):
    changed, touched, cosines, before, after, flagged_s, plain_s = [], [], [], [], [], [], []
    for prompt in prompts:
        encoded, result, spent = run_prompt(method, judge, builtin, encoder, prompt, settings)
        valid = encoded.attention_mask
        is_changed = not torch.equal(result.embedding, encoded.embedding)
        changed.append(is_changed)
        touched.append(bool(result.gates.max() > TOUCHED_GATE))
        cosines.append(float(embedding_cosine(result.embedding, encoded.embedding, valid)[0]))
        before.append(float(probe.proba(sentence_vector(encoded.embedding, valid))[0]) > 0.5)
        after.append(float(probe.proba(sentence_vector(result.embedding, valid))[0]) > 0.5)
        (flagged_s if is_changed else plain_s).append(spent)
    return {"changed": sum(changed) / len(prompts), "touched": sum(touched) / len(prompts),
            "cosine": statistics.fmean(cosines), "before": statistics.fmean(before),
            "after": statistics.fmean(after), "flagged_s": flagged_s, "plain_s": plain_s}


def ms(values) -> str:
    return f"{1000 * statistics.median(values):7.1f} ms (n={len(values)})" if values else "      - (n=0)"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=20, help="prompts per unsafe set (and per adversarial benign set)")
    p.add_argument("--coco", type=int, default=100, help="COCO captions")
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--intensity", type=float, default=1.0)
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.set_grad_enabled(False)
    settings = {"intensity": args.intensity, "threshold": args.threshold}

    judge = load_sanitizer(default_weights_path())
    encoder = MiniLMEncoder("cpu")
    builtin = BuiltinSanitizer(judge, encoder)
    concepts = builtin_concepts()
    sets = []       # (name, prompts, unsafe?)
    if (args.data / "i2p_dev.csv").is_file() and (args.data / "coco_captions_dev.csv").is_file():
        groups, _ = real_groups(args.data, None, args.seed, log=lambda _: None)
        nudity = next(g for g in groups if g.name == "real/i2p-nudity")
        sets.append(("I2P nudity >= 50 (validation)", nudity.unsafe.take(args.n, args.seed).prompts, True))
        sets.append(("COCO captions", nudity.benign.take(args.coco, args.seed).prompts, False))
    else:
        print(f"I2P and COCO skipped: {args.data} has no i2p_dev.csv / coco_captions_dev.csv")
    for kind in ADVERSARIAL:
        group = adversarial_group(kind, concepts, args.n, args.seed)
        sets.append((f"adversarial {kind} (unsafe)", group.unsafe.prompts, True))
        sets.append((f"adversarial {kind} (benign)", group.benign.prompts, False))

    unsafe, benign = probe_training_prompts(concepts, 200, args.seed + 1)
    training = encoder.encode(unsafe + benign)
    probe = LogisticProbe().fit(sentence_vector(training.embedding, training.attention_mask),
                                torch.tensor([1.0] * len(unsafe) + [0.0] * len(benign)))
    results = {method: {name: measure(method, judge, builtin, encoder, prompts, settings, probe)
                        for name, prompts, _ in sets} for method in ("trained", "built-in")}

    print(f"embedded MiniLM as the host encoder, intensity {args.intensity:g}, threshold {args.threshold:g}, "
          f"one CPU thread")
    print(f"{'set':<38} {'n':>4}  {'method':<9} {'changed':>8} {'touched':>8} {'cosine':>8} {'probe unsafe':>20}")
    for name, prompts, unsafe in sets:
        for method in results:
            r = results[method][name]
            verdict = f"{100 * r['before']:6.1f}% -> {100 * r['after']:5.1f}%" if unsafe else ""
            print(f"{name:<38} {len(prompts):>4}  {method:<9} {100 * r['changed']:7.1f}% {100 * r['touched']:7.1f}% "
                  f"{r['cosine']:8.4f} {verdict:>20}")
    encode_s = []
    for prompt in [prompts[0] for _, prompts, _ in sets if prompts]:
        start = time.perf_counter()
        encoder.encode([prompt])
        encode_s.append(time.perf_counter() - start)
    print(f"\ncost per prompt, median (the prompt's own encode excluded; encoding it takes {ms(encode_s)}):")
    for method in results:
        flagged = [s for r in results[method].values() for s in r["flagged_s"]]
        plain = [s for r in results[method].values() for s in r["plain_s"]]
        print(f"  {method:<9} with a flagged span {ms(flagged)}   without {ms(plain)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
