"""`python -m embedding_sanitizer eval`: measure the sanitizer and its peers on the same encoder,
the same prompts and in the same run, and write report.md, report.json and plots.

    python -m embedding_sanitizer eval --out eval_report                 # full run (documented)
    python -m embedding_sanitizer eval --quick --out /tmp/eval           # CI subset (minutes)
    python -m embedding_sanitizer eval --prompts my.csv --label unsafe   # add any CSV with a prompt column
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shlex
import sys
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import torch

from ..corpus import is_training_part
from ..model import DEFAULT_THRESHOLD
from ..paths import default_data_dir
from .. import validation
from . import prompts as P
from .cost import file_cost, measure_cost, measure_full_size
from .goal import goal_check
from .markdown import render_markdown
from .methods import (EncodingCache, KeywordFilter, NoDefence, SafreeProjection, SanitizerMethod,
                      Summary, item_pool)
from .plots import plot_tradeoffs
from .scoring import ConceptSimilarity, GroupInputs, LogisticProbe, group_metrics

DEFAULT_INTENSITIES = (0.5, 1.0, 1.5)


@dataclass(frozen=True)
class Sizes:
    """How much a run measures: the documented full run, or the CI subset (--quick)."""
    n_synth: int                        # prompts per synthetic / adversarial set
    n_real: Optional[int]               # at most this many per real set; None = all
    probe_synthetic: int                # synthetic prompts of each label for the probe
    sweep_intensities: tuple[float, ...]
    sweep_alphas: tuple[float, ...]
    cost: str                           # "none", "embedded" or "full"
    cost_repeats: int


FULL = Sizes(n_synth=40, n_real=100, probe_synthetic=400,
             sweep_intensities=(0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, validation.MAX_INTENSITY),
             sweep_alphas=(2.0, 1.0, 0.5, 0.3, 0.2, 0.1, 0.05, 0.02, 0.01, 0.0, -0.02, -0.05),
             cost="full", cost_repeats=7)
QUICK = Sizes(n_synth=16, n_real=30, probe_synthetic=100,
              sweep_intensities=(0.0, 0.5, 1.0, 2.0), sweep_alphas=(1.0, 0.1, 0.01, -0.05),
              cost="embedded", cost_repeats=3)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m embedding_sanitizer eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default=None, help="sanitizer weight file (default: the embedded MiniLM default)")
    p.add_argument("--encoder", default=None,
                   help="text encoder spec for sanitizers of other families (see embedding_sanitizer.encoders.load_encoder); "
                        "default: the embedded MiniLM for 'minilm' weights")
    p.add_argument("--out", default="eval_report", help="output folder (report.md, report.json, *.png)")
    p.add_argument("--quick", action="store_true", help="CI subset: small sets, short sweeps, embedded cost only")
    p.add_argument("--n-synth", type=int, default=None, help=f"prompts per synthetic / adversarial set (default {FULL.n_synth}; quick {QUICK.n_synth})")
    p.add_argument("--n-real", type=int, default=None,
                   help=f"at most this many prompts per real set (default {FULL.n_real}; quick {QUICK.n_real}; 0 = all)")
    p.add_argument("--data-dir", type=Path, default=default_data_dir(),
                   help="folder with i2p_dev.csv / coco_captions_dev.csv (default: <repo>/../shared/data)")
    p.add_argument("--no-real", action="store_true", help="skip the real prompt sets")
    p.add_argument("--prompts", action="append", default=[], metavar="FILE",
                   help="extra CSV with a 'prompt' column (repeatable; pair each with --label)")
    p.add_argument("--label", action="append", default=[], choices=("unsafe", "benign"),
                   help="label of the matching --prompts file")
    p.add_argument("--threshold", type=validation.argument(validation.threshold), default=DEFAULT_THRESHOLD,
                   help=f"tokens scoring under this are never changed (default {DEFAULT_THRESHOLD:g}, as in the "
                        f"nodes and A1111; the targets are measured there)")
    p.add_argument("--intensities", default=",".join(f"{x:g}" for x in DEFAULT_INTENSITIES))
    p.add_argument("--sweep", default=None, help="comma-separated intensities for the trade-off sweep")
    p.add_argument("--safree-alpha", type=float, default=0.01, help="SAFREE trigger margin alpha (paper default 0.01)")
    p.add_argument("--safree-sweep", default=None, help="comma-separated alphas for SAFREE's trade-off sweep")
    p.add_argument("--cost", choices=("none", "embedded", "full"), default=None,
                   help="cost measurement: embedded encoder only, or also full-size random CLIP-L and SDXL "
                        f"(default: {FULL.cost}; quick: {QUICK.cost})")
    p.add_argument("--render", default=None, metavar="REPORT_JSON",
                   help="only re-render report.md and plots from an earlier report.json")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    return p


def _floats(text: Optional[str], default) -> tuple[float, ...]:
    if not text:
        return tuple(default)
    return tuple(float(x) for x in text.split(",") if x.strip())


def _sizes(args) -> Sizes:
    """The run's sizes: --quick picks the defaults, the explicit options override them."""
    base = QUICK if args.quick else FULL
    n_real = base.n_real if args.n_real is None else args.n_real
    return replace(base, n_synth=args.n_synth or base.n_synth, n_real=None if n_real == 0 else n_real,
                   sweep_intensities=_floats(args.sweep, base.sweep_intensities),
                   sweep_alphas=_floats(args.safree_sweep, base.sweep_alphas),
                   cost=args.cost or base.cost)


def _load_model_and_encoder(args, encoder=None):
    """The sanitizer and the encoder it was trained for: `encoder` when given (tests pass one
    that needs no weights), else the one --encoder names (the embedded MiniLM by default)."""
    from .. import default_weights_path, load_sanitizer
    from ..encoders import encoder_for
    path = Path(args.weights) if args.weights else default_weights_path()
    model = load_sanitizer(path, device=args.device)
    family = model.config.encoder_family
    if encoder is None:
        try:
            encoder = encoder_for(model, args.encoder, args.device)
        except ValueError as exc:
            raise SystemExit(f"{path.name}: {exc}") from None
    if encoder.embed_dim != model.config.embed_dim:
        raise SystemExit(f"encoder {encoder.name} gives D={encoder.embed_dim}, the sanitizer expects "
                         f"{model.config.embed_dim} ({family})")
    return path, model, encoder


def _concepts(model) -> dict:
    from ..lexicon import builtin_concepts
    known = builtin_concepts()
    concepts = {c: known[c] for c in model.concepts if c in known}
    if not concepts:
        raise SystemExit(f"none of the sanitizer's concepts {list(model.concepts)} is in the built-in lexicon")
    return concepts


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


@dataclass
class Methods:
    """The compared methods and the (method, setting) runs of the main tables."""
    keyword: KeywordFilter
    safree: SafreeProjection
    sanitizer: SanitizerMethod
    intensities: tuple[float, ...]

    @property
    def runs(self) -> list[tuple]:
        return [(NoDefence(), None), (self.keyword, None), (self.safree, self.safree.alpha)] + \
               [(self.sanitizer, x) for x in self.intensities]


def run_evaluation(args, log=print, encoder=None) -> dict:
    """The whole comparison, one step after the other; returns every number (report.json)."""
    started = time.perf_counter()
    torch.manual_seed(args.seed)
    sizes = _sizes(args)
    if len(args.prompts) != len(args.label):
        raise SystemExit("each --prompts FILE needs a matching --label unsafe|benign")
    weights_path, model, encoder = _load_model_and_encoder(args, encoder)
    concepts = _concepts(model)
    log(f"encoder: {encoder.family} ({encoder.name}); sanitizer: {weights_path} concepts {list(model.concepts)}")

    data_dir, skipped = _real_data_dir(args, log)
    groups, real_info = _prompt_groups(args, sizes, concepts, data_dir, log)
    skipped += real_info.get("skipped", [])
    cache = EncodingCache(encoder)
    similarity = ConceptSimilarity(encoder, {c: P.concept_descriptions(c) for c in concepts})
    probe, probe_sources = _train_probe(args, sizes, concepts, data_dir, cache, log)
    methods = Methods(KeywordFilter([t for c in concepts.values() for t in c.train_terms]),
                      SafreeProjection(encoder, list(concepts), alpha=args.safree_alpha),
                      SanitizerMethod(model, threshold=args.threshold), _floats(args.intensities, DEFAULT_INTENSITIES))

    evaluation = Evaluation(cache, similarity, probe, log)
    results = _evaluate_groups(evaluation, groups, methods.runs, log)
    sweeps = _sweeps(evaluation, groups, methods, sizes, results, log)
    cost = _cost(sizes, weights_path, model, encoder, log)
    data = _report_data(args, encoder, model, weights_path, groups, real_info, skipped, concepts,
                        probe, probe_sources, methods, results, sweeps, cost, cache)
    data["wall_seconds"] = time.perf_counter() - started
    return data


# ---------------------------------------------------------------- the steps, in order


def _real_data_dir(args, log) -> tuple[Optional[Path], list[str]]:
    """The folder of the real prompt sets, or None (with the reason) where they are skipped."""
    if args.no_real:
        return None, ["real prompt sets skipped: --no-real"]
    data_dir = Path(args.data_dir)
    if not data_dir.is_dir():
        log(f"real prompt sets skipped: {data_dir} is absent")
        return None, [f"real prompt sets skipped: {data_dir} is absent"]
    return data_dir, []


def _prompt_groups(args, sizes: Sizes, concepts, data_dir, log) -> tuple[list[P.Group], dict]:
    """Synthetic, adversarial and real groups (minus the probe's split), the --prompts files,
    then the combined groups of the headline."""
    # The probe trains on the training part of the real sets; every figure is measured on the
    # validation part (shared/data/README.md).
    groups, real_info = P.build_groups(concepts, sizes.n_synth, sizes.n_real, args.seed, data_dir, log=log,
                                       exclude=is_training_part)
    benign_default = next((g.benign for g in groups if g.name == "real/i2p-all"),
                          next(g.benign for g in groups if g.name == "synthetic/heldout"))
    for path, label in zip(args.prompts, args.label):
        groups.append(P.custom_group(Path(path), label, sizes.n_real, args.seed, benign_default))
    groups += P.combined_groups(groups)
    for g in groups:
        log(f"  {g.name}: {len(g.unsafe) if g.unsafe else 0} unsafe, {len(g.benign)} benign")
    return groups, real_info


def _train_probe(args, sizes: Sizes, concepts, data_dir, cache, log) -> tuple[LogisticProbe, dict]:
    """The erasure probe, trained on ORIGINAL embeddings of synthetic prompts and of the real
    sets' probe split (never on any method's output)."""
    unsafe, benign = P.probe_training_prompts(concepts, sizes.probe_synthetic, args.seed)
    sources = {"synthetic_unsafe": len(unsafe), "synthetic_benign": len(benign)}
    if data_dir is not None:
        cap = None if sizes.n_real is None else max(sizes.n_real, 50)
        real_unsafe, real_benign, real_sources = P.real_probe_prompts(data_dir, cap, args.seed,
                                                                      is_training_part)
        unsafe, benign = unsafe + real_unsafe, benign + real_benign
        sources.update(real_sources)
    started = time.perf_counter()
    xs = torch.stack([item_pool(it) for it in cache.get(unsafe + benign)])
    ys = torch.cat([torch.ones(len(unsafe)), torch.zeros(len(benign))])
    probe = LogisticProbe().fit(xs, ys)
    log(f"probe: trained on {len(unsafe)} unsafe + {len(benign)} benign original embeddings "
        f"(train accuracy {probe.train_accuracy:.3f}, {time.perf_counter() - started:.1f}s)")
    return probe, sources


def _evaluate_groups(evaluation: Evaluation, groups, runs, log) -> dict:
    """Every run's metrics on every group: results[group][run label]."""
    results = {}
    for g in groups:
        started = time.perf_counter()
        results[g.name] = {method.label(setting): evaluation.metrics(method, setting, g)
                           for method, setting in runs}
        log(f"  evaluated {g.name} ({time.perf_counter() - started:.1f}s)")
    return results


def _sweeps(evaluation: Evaluation, groups, methods: Methods, sizes: Sizes, results, log) -> dict:
    """The trade-off curves on the headline groups: the sanitizer over intensity, the SAFREE-style
    projection over alpha, and the keyword filter and no defence as single points."""
    sweeps = {"sanitizer": {"knob": "intensity", "values": list(sizes.sweep_intensities), "groups": {}},
              "SAFREE-style projection": {"knob": "alpha", "values": list(sizes.sweep_alphas), "groups": {}}}
    for g in (g for g in groups if g.name in P.HEADLINE_GROUPS):
        for key, method in (("sanitizer", methods.sanitizer), ("SAFREE-style projection", methods.safree)):
            sweeps[key]["groups"][g.name] = [
                {"setting": v, **_tradeoff_point(evaluation.metrics(method, v, g), with_p1=True)}
                for v in sweeps[key]["values"]]
        for name, method in (("keyword filter", methods.keyword), ("no defence", NoDefence())):
            sweeps.setdefault("points", {}).setdefault(g.name, {})[name] = \
                _tradeoff_point(results[g.name][method.label(None)])
        log(f"  swept {g.name}")
    return sweeps


def _tradeoff_point(metrics: dict, with_p1: bool = False) -> dict:
    point = {"benign_cosine_mean": metrics["preservation"]["benign_cosine_mean"]}
    if with_p1:
        point["benign_cosine_p1"] = metrics["preservation"]["benign_cosine_p1"]
    point["probe_asr_after"] = metrics["erasure"]["probe_asr_after"]
    point["concept_residual"] = metrics["erasure"]["concept_residual"]
    return point


def _cost(sizes: Sizes, weights_path, model, encoder, log) -> dict:
    cost = {"weights": file_cost(weights_path, model)}
    if sizes.cost != "none":
        log("cost: embedded encoder")
        cost["embedded"] = measure_cost(encoder, model, repeats=sizes.cost_repeats)
        if sizes.cost == "full":
            log("cost: full-size random CLIP-L and SDXL encoders")
            cost["full_size"] = measure_full_size(model, repeats=5, log=log)
    return cost


def _report_data(args, encoder, model, weights_path, groups, real_info, skipped, concepts, probe,
                 probe_sources, methods: Methods, results, sweeps, cost, cache) -> dict:
    """Everything report.json holds, the setup first, then the numbers."""
    meta = model.metadata or {}
    return {
        "command": "python -m embedding_sanitizer eval " + " ".join(shlex.quote(a) for a in getattr(args, "argv", [])),
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "quick": args.quick,
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
                  "features": "mean-pooled original encoder output",
                  "split": "training part of shared/data (README there)"},
        "methods": {
            "no defence": "the encoder output as it is",
            "keyword filter": f"deletes the lexicon's {len(methods.keyword.terms)} train terms from the prompt "
                              f"(case-insensitive, whole words) before encoding",
            "SAFREE-style projection": f"after arXiv 2410.12761: {len(methods.safree.phrases)} concept phrases, "
                                       f"subspace rank {methods.safree.basis.shape[1]}, alpha {args.safree_alpha:g}",
            "sanitizer": f"this project's sanitizer, threshold {methods.sanitizer.threshold:g}, at intensities "
                         + ", ".join(f"{x:g}" for x in methods.intensities),
        },
        "runs": [m.label(s) for m, s in methods.runs],
        "results": results,
        "sweeps": sweeps,
        "cost": cost,
        "encode_seconds": cache.encode_seconds, "prompts_encoded": cache.encoded,
        "sanitize_seconds_total": methods.sanitizer.sanitize_seconds,
    }


# ---------------------------------------------------------------- output


def json_safe(o):
    """`o` with NaN and infinities as null (JSON has neither) and every key a string."""
    if isinstance(o, float) and (math.isnan(o) or math.isinf(o)):
        return None
    if isinstance(o, dict):
        return {str(k): json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [json_safe(v) for v in o]
    return o


def write_report(data: dict, out: Path) -> dict:
    """report.json, the plots and report.md in `out`, with the goal check added to `data`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data["goal"] = goal_check(data)
    try:
        plots = plot_tradeoffs(data, out)
    except ImportError as exc:   # matplotlib missing: the report still gets written
        plots = []
        data.setdefault("skipped", []).append(f"plots skipped: {exc}")
    data["plots"] = plots
    (out / "report.json").write_text(json.dumps(json_safe(data), indent=1))
    (out / "report.md").write_text(render_markdown(data, plots))
    return {"markdown": out / "report.md", "json": out / "report.json", "plots": [out / p for p in plots]}


def main(argv=None, encoder=None) -> int:
    """`python -m embedding_sanitizer eval`; `encoder` replaces the one --encoder names (tests)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    out = Path(args.out)
    if args.render:
        data = json.loads(Path(args.render).read_text())
    else:
        data = run_evaluation(args, log=lambda msg: print(msg, flush=True), encoder=encoder)
        out.mkdir(parents=True, exist_ok=True)   # keep the numbers even if rendering fails
        (out / "report.json").write_text(json.dumps(json_safe(data), indent=1))
    paths = write_report(data, out)
    print(f"report: {paths['markdown']}  ({data['wall_seconds']:.0f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
