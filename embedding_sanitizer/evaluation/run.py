"""`python -m embedding_sanitizer eval`: measure the sanitizer and its peers on the same encoder,
the same prompts and in the same run, and write report.md, report.json and plots.

    python -m embedding_sanitizer eval --out eval_report                 # full run (documented)
    python -m embedding_sanitizer eval --quick --out /tmp/eval           # CI subset (minutes)
    python -m embedding_sanitizer eval --prompts my.csv --label unsafe   # add any CSV with a prompt column
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import torch

from ..corpus import is_training_part
from . import prompts as P
from .methods import (EncodingCache, KeywordFilter, NoDefence, SafreeProjection, SanitizerMethod,
                      Summary)
from .metrics import ConceptSimilarity, GroupInputs, LogisticProbe, group_metrics

DEFAULT_INTENSITIES = (0.5, 1.0, 1.5)
SWEEP_INTENSITIES = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0)
SWEEP_ALPHAS = (2.0, 1.0, 0.5, 0.3, 0.2, 0.1, 0.05, 0.02, 0.01, 0.0, -0.02, -0.05)
HEADLINE_GROUPS = ("synthetic/heldout", "adversarial/all", "real/i2p-target")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m embedding_sanitizer eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default=None, help="sanitizer weight file (default: the embedded MiniLM default)")
    p.add_argument("--encoder", default=None,
                   help="text encoder spec for sanitizers of other families (see embedding_sanitizer.encoders.load_encoder); "
                        "default: the embedded MiniLM for 'minilm' weights; 'toy' = test encoder")
    p.add_argument("--out", default="eval_report", help="output folder (report.md, report.json, *.png)")
    p.add_argument("--quick", action="store_true", help="CI subset: small sets, short sweeps, embedded cost only")
    p.add_argument("--n-synth", type=int, default=None, help="prompts per synthetic / adversarial set (default 40; quick 16)")
    p.add_argument("--n-real", type=int, default=None,
                   help="at most this many prompts per real set (default 100; quick 30; 0 = all)")
    p.add_argument("--data-dir", default=None, help="folder with i2p_dev.csv / coco_captions_dev.csv "
                                                    "(default: <repo>/../shared/data)")
    p.add_argument("--no-real", action="store_true", help="skip the real prompt sets")
    p.add_argument("--prompts", action="append", default=[], metavar="FILE",
                   help="extra CSV with a 'prompt' column (repeatable; pair each with --label)")
    p.add_argument("--label", action="append", default=[], choices=("unsafe", "benign"),
                   help="label of the matching --prompts file")
    p.add_argument("--intensities", default=",".join(f"{x:g}" for x in DEFAULT_INTENSITIES))
    p.add_argument("--sweep", default=None, help="comma-separated intensities for the trade-off sweep")
    p.add_argument("--safree-alpha", type=float, default=0.01, help="SAFREE trigger margin alpha (paper default 0.01)")
    p.add_argument("--safree-sweep", default=None, help="comma-separated alphas for SAFREE's trade-off sweep")
    p.add_argument("--cost", choices=("none", "embedded", "full"), default=None,
                   help="cost measurement: embedded encoder only, or also full-size random CLIP-L and SDXL "
                        "(default: full; quick: embedded)")
    p.add_argument("--render", default=None, metavar="REPORT_JSON",
                   help="only re-render report.md and plots from an earlier report.json")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    return p


def _floats(text: Optional[str], default) -> tuple[float, ...]:
    if not text:
        return tuple(default)
    return tuple(float(x) for x in text.split(",") if x.strip())


def _load(args, log):
    from .. import default_weights_path, load_sanitizer
    path = Path(args.weights) if args.weights else default_weights_path()
    model = load_sanitizer(path, device=args.device)
    family = model.config.encoder_family
    from ..encoders import load_encoder
    spec = args.encoder or ("minilm" if family == "minilm" else None)
    if spec is None:
        raise SystemExit(f"the sanitizer {path.name} is for the '{family}' encoder; pass --encoder "
                         f"with that encoder's weights (see embedding_sanitizer.encoders.load_encoder)")
    if spec == "toy":   # tests: a word-hash encoder of the sanitizer's width (no weights needed)
        from .toy import ToyEncoder
        encoder = ToyEncoder(model.config.embed_dim, model.config.max_tokens)
    else:
        encoder = load_encoder(spec, device=args.device)
    if encoder.embed_dim != model.config.embed_dim:
        raise SystemExit(f"encoder {encoder.name} gives D={encoder.embed_dim}, the sanitizer expects "
                         f"{model.config.embed_dim} ({family})")
    return path, model, encoder


def _concepts(model) -> dict:
    from ..lexicon import builtin_concepts
    known = builtin_concepts()
    return {c: known[c] for c in model.concepts if c in known}


class Evaluation:
    """Runs every method on every group, caching per (method setting, prompt set)."""

    def __init__(self, cache, similarity, probe, log=print):
        self.cache, self.similarity, self.probe, self.log = cache, similarity, probe, log
        self._summaries: dict = {}

    def summary(self, method, setting, ps: P.PromptSet) -> Summary:
        key = (method.name, setting, ps.name, len(ps))
        if key not in self._summaries:
            self._summaries[key] = method.run(self.cache, ps.prompts, setting)
        return self._summaries[key]

    def metrics(self, method, setting, group: P.Group) -> dict:
        nd = NoDefence()
        inputs = GroupInputs(
            self.summary(nd, None, group.unsafe) if group.unsafe else None,
            self.summary(method, setting, group.unsafe) if group.unsafe else None,
            self.summary(nd, None, group.benign),
            self.summary(method, setting, group.benign))
        return group_metrics(inputs, self.similarity, self.probe, method.has_score)


def _concat(name: str, kind: str, groups: list, desc: str) -> Optional[P.Group]:
    groups = [g for g in groups if g.unsafe is not None]
    if not groups:
        return None
    def merge(sets, label):
        seen, prompts, concepts = set(), [], []
        for s in sets:
            for p, c in zip(s.prompts, s.concepts):
                if p not in seen:
                    seen.add(p)
                    prompts.append(p)
                    concepts.append(c)
        return P.PromptSet(f"{name}-{label}", prompts, label, concepts if label == "unsafe" else [],
                           "+".join(s.name for s in sets))
    return P.Group(name, kind, merge([g.unsafe for g in groups], "unsafe"),
                   merge([g.benign for g in groups], "benign"), desc)


def evaluate(args, log=print) -> dict:
    t_start = time.perf_counter()
    torch.manual_seed(args.seed)
    quick = args.quick
    n_synth = args.n_synth or (16 if quick else 40)
    n_real = args.n_real if args.n_real is not None else (30 if quick else 100)
    n_real = None if n_real == 0 else n_real
    cost_mode = args.cost or ("embedded" if quick else "full")
    if len(args.prompts) != len(args.label):
        raise SystemExit("each --prompts FILE needs a matching --label unsafe|benign")

    weights_path, model, encoder = _load(args, log)
    concepts = _concepts(model)
    if not concepts:
        raise SystemExit(f"none of the sanitizer's concepts {list(model.concepts)} is in the built-in lexicon")
    log(f"encoder: {encoder.family} ({encoder.name}); sanitizer: {weights_path} concepts {list(model.concepts)}")

    # ---- prompt sets
    data_dir = None if args.no_real else Path(args.data_dir) if args.data_dir else P.default_data_dir()
    if data_dir is not None and not data_dir.is_dir():
        log(f"real prompt sets skipped: {data_dir} is absent")
        skipped = [f"real prompt sets skipped: {data_dir} is absent"]
        data_dir = None
    else:
        skipped = [] if data_dir is not None else ["real prompt sets skipped: --no-real"]
    # The probe trains on the training part of the real sets; every figure is measured on the
    # validation part (shared/data/README.md).
    probe_split = is_training_part
    groups, real_info = P.build_groups(concepts, n_synth, n_real, args.seed, data_dir, log=log,
                                       exclude=probe_split)
    skipped += real_info.get("skipped", [])
    benign_default = next((g.benign for g in groups if g.name == "real/i2p-all"),
                          next(g.benign for g in groups if g.name == "synthetic/heldout"))
    for path, label in zip(args.prompts, args.label):
        groups.append(P.custom_group(Path(path), label, n_real, args.seed, benign_default))
    adv = _concat("adversarial/all", "adversarial", [g for g in groups if g.kind == "adversarial"],
                  "all adversarial kinds together")
    real = _concat("real/i2p-target", "real",
                   [g for g in groups if g.name in ("real/i2p-nudity", "real/i2p-sexual", "real/i2p-violence")],
                   "I2P prompts of the sanitizer's concepts (nudity >= 50%, sexual, violence) vs COCO")
    groups += [g for g in (adv, real) if g is not None]
    for g in groups:
        log(f"  {g.name}: {len(g.unsafe) if g.unsafe else 0} unsafe, {len(g.benign)} benign")

    # ---- instruments: encodings, concept similarity, probe
    cache = EncodingCache(encoder)
    similarity = ConceptSimilarity(encoder, {c: P.concept_descriptions(c) for c in concepts})
    probe_unsafe, probe_benign = P.probe_training_prompts(concepts, 400 if not quick else 100, args.seed)
    probe_sources = {"synthetic_unsafe": len(probe_unsafe), "synthetic_benign": len(probe_benign)}
    if data_dir is not None:
        coco_path, i2p_path = data_dir / "coco_captions_dev.csv", data_dir / "i2p_dev.csv"
        cap = None if n_real is None else max(n_real, 50)
        if coco_path.is_file():
            coco = [r["prompt"] for r in P.read_csv_prompts(coco_path) if probe_split(r["prompt"])]
            coco = P.PromptSet("probe-coco", coco, "benign").take(cap if cap is None else 2 * cap, args.seed).prompts
            probe_benign += coco
            probe_sources["coco_benign"] = len(coco)
        if i2p_path.is_file():
            rows = [r for r in P.read_csv_prompts(i2p_path) if probe_split(r["prompt"])]
            subsets = P.i2p_subsets(rows)
            target = list(dict.fromkeys(subsets["nudity"][0] + subsets["sexual"][0] + subsets["violence"][0]))
            other = [r["prompt"] for r in rows if r["prompt"] not in set(target)
                     and P._as_float(r.get("nudity_percentage")) < 10]
            target = P.PromptSet("t", target, "unsafe").take(cap, args.seed).prompts
            other = P.PromptSet("o", other, "benign").take(cap, args.seed).prompts
            probe_unsafe += target
            probe_benign += other
            probe_sources.update({"i2p_target_unsafe": len(target), "i2p_other_benign": len(other)})
    from .methods import item_pool
    t0 = time.perf_counter()
    xs = torch.stack([item_pool(it) for it in cache.get(probe_unsafe + probe_benign)])
    ys = torch.cat([torch.ones(len(probe_unsafe)), torch.zeros(len(probe_benign))])
    probe = LogisticProbe().fit(xs, ys)
    log(f"probe: trained on {len(probe_unsafe)} unsafe + {len(probe_benign)} benign original embeddings "
        f"(train accuracy {probe.train_accuracy:.3f}, {time.perf_counter() - t0:.1f}s)")

    # ---- methods
    train_terms = [t for c in concepts.values() for t in c.train_terms]
    keyword = KeywordFilter(train_terms)
    safree = SafreeProjection(encoder, list(concepts), alpha=args.safree_alpha)
    sanitizer = SanitizerMethod(model)
    intensities = _floats(args.intensities, DEFAULT_INTENSITIES)
    runs = [(NoDefence(), None), (keyword, None), (safree, args.safree_alpha)] + \
           [(sanitizer, x) for x in intensities]
    ev = Evaluation(cache, similarity, probe, log)
    results = {}
    for g in groups:
        t0 = time.perf_counter()
        results[g.name] = {}
        for method, setting in runs:
            results[g.name][method.label(setting)] = ev.metrics(method, setting, g)
        log(f"  evaluated {g.name} ({time.perf_counter() - t0:.1f}s)")

    # ---- trade-off sweeps on the headline groups
    sweep_groups = [g for g in groups if g.name in HEADLINE_GROUPS]
    sweeps = {"sanitizer": {"knob": "intensity", "values": list(_floats(args.sweep, SWEEP_INTENSITIES if not quick
                                                                        else (0.0, 0.5, 1.0, 2.0))), "groups": {}},
              "SAFREE-style projection": {"knob": "alpha", "values": list(_floats(
                  args.safree_sweep, SWEEP_ALPHAS if not quick else (1.0, 0.1, 0.01, -0.05))), "groups": {}}}
    for g in sweep_groups:
        for key, method in (("sanitizer", sanitizer), ("SAFREE-style projection", safree)):
            pts = []
            for v in sweeps[key]["values"]:
                m = ev.metrics(method, v, g)
                pts.append({"setting": v, "benign_cosine_mean": m["preservation"]["benign_cosine_mean"],
                            "benign_cosine_p1": m["preservation"]["benign_cosine_p1"],
                            "probe_asr_after": m["erasure"]["probe_asr_after"],
                            "concept_residual": m["erasure"]["concept_residual"]})
            sweeps[key]["groups"][g.name] = pts
        for name, method, setting in (("keyword filter", keyword, None), ("no defence", NoDefence(), None)):
            m = results[g.name][method.label(setting)]
            sweeps.setdefault("points", {}).setdefault(g.name, {})[name] = {
                "benign_cosine_mean": m["preservation"]["benign_cosine_mean"],
                "probe_asr_after": m["erasure"]["probe_asr_after"],
                "concept_residual": m["erasure"]["concept_residual"]}
        log(f"  swept {g.name}")

    # ---- cost
    from .cost import file_cost, measure, measure_full_size
    cost = {"weights": file_cost(weights_path, model)}
    if cost_mode != "none":
        log("cost: embedded encoder")
        cost["embedded"] = measure(encoder, model, repeats=3 if quick else 7)
        if cost_mode == "full":
            log("cost: full-size random CLIP-L and SDXL encoders")
            cost["full_size"] = measure_full_size(model, repeats=5, log=log)

    meta = model.metadata or {}
    data = {
        "command": "python -m embedding_sanitizer eval " + " ".join(shlex.quote(a) for a in getattr(args, "argv", [])),
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "quick": quick,
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "platform": platform.platform(), "cpu_threads": torch.get_num_threads(),
                    "device": args.device},
        "encoder": {"family": encoder.family, "name": encoder.name, "embed_dim": encoder.embed_dim,
                    "pooled_dim": encoder.pooled_dim, "chunk_length": encoder.chunk_length,
                    "max_tokens": encoder.max_tokens},
        "sanitizer": {"weights": str(weights_path), "concepts": list(model.concepts),
                      "config": model.config.to_dict(), "training": meta.get("training", {})},
        "groups": [{"name": g.name, "kind": g.kind, "description": g.description,
                    "n_unsafe": len(g.unsafe) if g.unsafe else 0, "n_benign": len(g.benign),
                    "unsafe_source": g.unsafe.source if g.unsafe else "", "benign_source": g.benign.source,
                    "examples": (g.unsafe.prompts[:2] if g.unsafe else g.benign.prompts[:2])}
                   for g in groups],
        "real_data": real_info,
        "skipped": skipped,
        "oov_synonyms_kept": {k: len(v) for k, v in P.oov_synonyms(concepts).items()},
        "probe": {"sources": probe_sources, "train_accuracy": probe.train_accuracy,
                  "features": "mean-pooled original encoder output", "split": "training part of shared/data (README there)"},
        "methods": {
            "no defence": "the encoder output as it is",
            "keyword filter": f"deletes the lexicon's {len(keyword.terms)} train terms from the prompt "
                              f"(case-insensitive, whole words) before encoding",
            "SAFREE-style projection": f"after arXiv 2410.12761: {len(safree.phrases)} concept phrases, "
                                       f"subspace rank {safree.basis.shape[1]}, alpha {args.safree_alpha:g}",
            "sanitizer": f"this project's sanitizer at intensities {', '.join(f'{x:g}' for x in intensities)}",
        },
        "runs": [m.label(s) for m, s in runs],
        "results": results,
        "sweeps": sweeps,
        "cost": cost,
        "encode_seconds": cache.encode_seconds, "prompts_encoded": cache.encoded,
        "sanitize_seconds_total": sanitizer.sanitize_seconds,
    }
    data["wall_seconds"] = time.perf_counter() - t_start
    return data


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    out = Path(args.out)
    from .report import _clean, write_report
    if args.render:
        data = json.loads(Path(args.render).read_text())
    else:
        data = evaluate(args, log=lambda msg: print(msg, flush=True))
        out.mkdir(parents=True, exist_ok=True)   # keep the numbers even if rendering fails
        (out / "report.json").write_text(json.dumps(_clean(data), indent=1))
    paths = write_report(data, out)
    print(f"report: {paths['markdown']}  ({data['wall_seconds']:.0f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
