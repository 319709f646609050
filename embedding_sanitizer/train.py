"""Train a sanitizer for one text encoder (docs/method.md, "Training").

Top to bottom: build the corpus (corpus.py), encode it once with the frozen encoder (the
cache), then train only the sanitizer with

    L = erase(San(E(unsafe)), E(anchor)) + l_p * preserve(San(E(benign)), E(benign))
      + l_s * bce(token scores, token labels)
      + l_w * bce(prompt scores, prompt labels)          # weak, prompt-level labels
      [+ l_q * the erase and preserve terms on the pooled vector]

and measure it on held-out terms it never saw.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from typing import Callable, Optional, Sequence

import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from .corpus import UNKNOWN, Corpus, Example, build_corpus, heldout_sets, weak_examples
from .encoders import EncodedBatch, TextEncoder, pick_device
from .lexicon import Concept
from .metrics import evaluate
from .model import DEFAULT_THRESHOLD, EmbeddingSanitizer, SanitizerConfig, sentence_vector
from .probe import LogisticProbe
from .vocabulary import vocabulary_record

# Above this held-out benign touched share, the summary tells the user what to add.
BENIGN_TOUCHED_WARNING = 0.02
# Below this held-out AUROC, detection is close to chance (0.5): the summary says to train more.
CHANCE_AUROC_WARNING = 0.6
# Below this share of a concept's held-out unsafe prompts changed at the default threshold, the
# sanitizer hardly erases the concept (the embedded default changes about 75%).
UNSAFE_TOUCHED_WARNING = 0.5


@dataclass
class TrainConfig:
    """The one training recipe: the CLI, `make default-weights` (the embedded default) and
    ComfyUI's Train node all start from these defaults; `scaled` sizes the corpus for them."""
    # optimisation
    steps: int = 2400                  # AdamW steps, cosine schedule after a short warm-up
    batch_size: int = 48               # unsafe/anchor pairs per step (twice as many benign, half as many real)
    lr: float = 1e-3
    weight_decay: float = 0.01
    # the network (its shape is SanitizerConfig's; these only choose it)
    width: int = SanitizerConfig.width
    layers: int = SanitizerConfig.layers
    heads: int = SanitizerConfig.heads
    # the corpus (corpus.py); `scaled` keeps these in proportion
    pairs_per_concept: int = 1500      # synthesized unsafe prompts, each with its anchor twin
    benign: int = 8000                 # synthetic and real benign prompts (anchor twins come on top)
    weak_prompts: int = 100_000        # at most this many prompt-level labelled real prompts (0 = none)
    heldout_pairs_per_concept: int = 300   # unsafe prompts from held-out terms, for the summary's figures
    heldout_benign: int = 1000         # benign prompts never trained on, for the summary's figures
    # loss weights (the loss is in this module's docstring)
    preserve_weight: float = 1.0       # keep benign embeddings where they are
    score_weight: float = 1.0          # token scores against token labels
    weak_weight: float = 2.0           # prompt scores against prompt-level labels
    pooled_weight: float = 1.0         # the erase and preserve terms on the pooled vector
    prompt_prior: float = 1.0          # weight of the prompt-level prior (model.py); 0 = none
    prompt_probe: float = 0.25         # weight of the prompt-level probe, fitted after training; 0 = none
    # running
    encode_batch: int = 64             # prompts per encoder call
    seed: int = 0                      # corpus and initialisation: same seed, same file
    device: Optional[str] = None       # None = the best available

    def scaled(self, pairs_per_concept: int, concepts: Sequence[Concept]) -> "TrainConfig":
        """The recipe with every part of the corpus in proportion to `pairs_per_concept`, so a small
        value is a quick trial of the same recipe. The held-out sets keep a floor that still gives
        figures; real labelled prompts are finite, so a larger corpus uses them all."""
        share = pairs_per_concept / self.pairs_per_concept
        weak = self.weak_prompts
        if share < 1:
            weak = min(weak, round(len(weak_examples(concepts)[0]) * share))
        return replace(self, pairs_per_concept=pairs_per_concept, benign=round(self.benign * share),
                       weak_prompts=weak,
                       heldout_pairs_per_concept=max(16, round(self.heldout_pairs_per_concept * share)),
                       heldout_benign=max(32, round(self.heldout_benign * share)))


# The counts a training needs at least one of: with none, it fails (or saves nothing useful)
# only after the encoding, tens of minutes in.
_COUNTS_FROM_ONE = ("steps", "batch_size", "pairs_per_concept", "benign", "heldout_pairs_per_concept",
                    "heldout_benign", "encode_batch", "width", "layers", "heads")


def check_training(concepts: Sequence[Concept], config: TrainConfig) -> None:
    """Raise ValueError for concepts or settings that train_sanitizer would fail on only after
    encoding and training: no concept, a repeated or over-long name, a count below one."""
    from .weights import MAX_CONCEPTS

    names = [c.name for c in concepts]
    if not names or len(names) > MAX_CONCEPTS:
        raise ValueError(f"{len(names)} concepts; a sanitizer erases 1 to {MAX_CONCEPTS}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"concept {repeated[0]!r} is given twice (a built-in and a concepts file may share a "
                         f"name); rename one or leave one out")
    for name in ("weak_prompts", *_COUNTS_FROM_ONE):
        value, least = getattr(config, name), 0 if name == "weak_prompts" else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{name} must be a whole number of at least {least}, got {value!r:.40}")
    if config.width % config.heads:
        raise ValueError(f"width {config.width} must be a multiple of heads {config.heads}")


@dataclass
class Cache:
    """Encoder outputs, computed once, kept on the CPU in half precision."""
    embedding: torch.Tensor          # (N, T, D) float16
    pooled: Optional[torch.Tensor]   # (N, P) float16
    attention: torch.Tensor          # (N, T) bool
    real: torch.Tensor               # (N, T) bool
    token_ids: torch.Tensor          # (N, T) long

    def select(self, keep: torch.Tensor) -> "Cache":
        return Cache(*(None if t is None else t[keep] for t in vars(self).values()))


def encode_all(encoder: TextEncoder, prompts: Sequence[str], batch: int, label: str,
               progress: Optional[Callable] = None) -> Cache:
    # Prompts of similar length share a batch, so little time goes into padding.
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    parts: list[EncodedBatch] = []
    for start in tqdm(range(0, len(prompts), batch), desc=f"encoding {label}", leave=False):
        parts.append(encoder.encode([prompts[i] for i in order[start:start + batch]]))
        if progress:
            progress(0, 0, {})
    length = max(p.embedding.shape[1] for p in parts)

    def pad(t, value):
        return F.pad(t, (0, 0, 0, length - t.shape[1]), value=value) if t.dim() == 3 else \
            F.pad(t, (0, length - t.shape[1]), value=value)

    restore = torch.empty(len(order), dtype=torch.long)
    restore[torch.tensor(order)] = torch.arange(len(order))
    return Cache(
        embedding=torch.cat([pad(p.embedding, 0.0).half() for p in parts])[restore],
        pooled=torch.cat([p.pooled.half() for p in parts])[restore] if parts[0].pooled is not None else None,
        attention=torch.cat([pad(p.attention_mask, False) for p in parts])[restore],
        real=torch.cat([pad(p.real_mask, False) for p in parts])[restore],
        token_ids=torch.cat([pad(p.token_ids, 0) for p in parts])[restore],
    )


def aligned(spans: list[list[int]], unsafe: Cache, anchor: Cache) -> torch.Tensor:
    """Keep pairs whose term was found (`spans`: its rows) and whose twins have the same real rows
    and differ only in the term's rows. The two caches may be padded to different lengths."""
    length = min(unsafe.token_ids.shape[1], anchor.token_ids.shape[1])
    keep = []
    for i, span in enumerate(spans):
        if not span or unsafe.attention[i, length:].any() or anchor.attention[i, length:].any():
            keep.append(False)
            continue
        differs = unsafe.token_ids[i, :length] != anchor.token_ids[i, :length]
        differs[span] = False
        keep.append(torch.equal(unsafe.real[i, :length], anchor.real[i, :length]) and not differs.any())
    return torch.tensor(keep)


def term_labels(examples: list[Example], spans: list[list[int]], concepts: list[str], cache: Cache) -> torch.Tensor:
    labels = torch.full((*cache.attention.shape, len(concepts)), UNKNOWN)
    for i, (ex, span) in enumerate(zip(examples, spans)):
        labels[i, span] = 0.0
        labels[i, span, concepts.index(ex.concept)] = 1.0
    return labels


def benign_labels(cache: Cache, concepts: int) -> torch.Tensor:
    labels = torch.zeros((*cache.attention.shape, concepts))
    return labels.masked_fill(~cache.attention.unsqueeze(-1), UNKNOWN)


def feature_scale(cache: Cache) -> torch.Tensor:
    """Per-feature spread of the embeddings, so no single large feature dominates the MSE."""
    values = cache.embedding[cache.attention].float()
    return values.std(dim=0).clamp_min(1e-3)


def masked_mse(prediction, target, mask, scale):
    """Sum of per-token squared errors (scaled per feature) over the mask, and the mask's count."""
    error = ((prediction - target) / scale).pow(2).mean(dim=-1)
    return (error * mask).sum(), mask.sum()


def apply(model: EmbeddingSanitizer, embedding, attention):
    """The sanitizer at intensity 1, differentiable: output, per-concept scores, gates, pooled delta."""
    scores, delta, pooled_delta = model(embedding, attention)
    gates = model.gates_from_scores(scores, torch.ones(scores.shape[-1], dtype=torch.bool), 1.0, 0.0, attention)
    return embedding + gates.unsqueeze(-1) * delta, scores, gates, pooled_delta


def weak_loss(scores, real, labels):
    """Summed BCE of each concept's prompt score (max over real tokens) against prompt-level
    labels, and how many labels were known."""
    per_concept = scores.masked_fill(~real.unsqueeze(-1), 0.0).amax(dim=1)       # (B, C)
    known = labels != UNKNOWN
    loss = F.binary_cross_entropy(per_concept[known].clamp(1e-6, 1 - 1e-6), labels[known], reduction="sum")
    return loss, known.sum()


class Batches:
    """Random training batches from a cache. A batch is cut into groups of similar length, each
    padded only to its own longest prompt: real prompts range from 3 to 128 tokens, and one long
    prompt would otherwise make the whole batch that long."""

    def __init__(self, device, seed: int, groups: int = 4):
        self.device = device
        self.groups = groups
        self.generator = torch.Generator().manual_seed(seed)

    def draw(self, size: int, cache: Cache, labels: torch.Tensor, *aligned: Cache):
        """Sub-batches (idx, embedding, attention, real, labels, *aligned embeddings); labels per
        token (N, T, C) are cut like the embedding, labels per prompt (N, C) are not."""
        idx = torch.randint(len(cache.embedding), (size,), generator=self.generator)
        lengths = cache.attention[idx].sum(dim=1)
        idx = idx[lengths.argsort()]
        for part in idx.chunk(self.groups):
            length = int(cache.attention[part].sum(dim=1).max())
            cut = lambda t: t[part][:, :length].to(self.device)  # noqa: E731
            picked = cut(labels) if labels.dim() == 3 else labels[part].to(self.device)
            yield (part, cut(cache.embedding).float(), cut(cache.attention), cut(cache.real), picked,
                   *(cut(c.embedding).float() for c in aligned))


def train_sanitizer(encoder: TextEncoder, concepts: Sequence[Concept], config: TrainConfig = TrainConfig(),
                    progress: Optional[Callable[[int, int, dict], None]] = None,
                    on_stage: Optional[Callable[[str, int], None]] = None):
    """Returns (model, summary). `progress(step, total, losses)` is called often and may raise to stop.
    `on_stage(stage, prompts)` says how many prompts the encoder is about to read: "training"
    once the corpus is built, "held-out" after training (a host's progress bar counts them)."""
    check_training(concepts, config)
    started = time.time()
    torch.manual_seed(config.seed)
    device = pick_device(config.device)
    names = [c.name for c in concepts]
    count = lambda text: len(encoder.token_ids(text))  # noqa: E731

    # 1. The corpus.
    # Term positions are counted within the encoder's first window, between its specials.
    room = encoder.max_tokens - encoder.leading_specials - 1
    corpus: Corpus = build_corpus(concepts, count, config.pairs_per_concept, config.benign, config.seed,
                                  config.weak_prompts, room)

    encoded_prompts = (2 * len(corpus.pairs) + len(corpus.benign) + len(corpus.weak)
                       + prior_prompt_count(config, concepts))
    if on_stage:
        on_stage("training", encoded_prompts)

    # 2. Encode it once.
    enc = lambda prompts, label: encode_all(encoder, prompts, config.encode_batch, label, progress)  # noqa
    unsafe = enc([e.unsafe for e in corpus.pairs], "unsafe prompts")
    anchor = enc([e.anchor for e in corpus.pairs], "anchor prompts")
    benign = enc(corpus.benign, "benign prompts")
    weak = enc(corpus.weak, "real prompts") if corpus.weak else None
    spans = [encoder.span_positions(ex.unsafe, *ex.term_span) for ex in corpus.pairs]
    keep = aligned(spans, unsafe, anchor)
    if keep.sum() < 16:
        raise ValueError(f"only {int(keep.sum())} usable unsafe/anchor pairs: add anchors whose token "
                         f"counts match the terms' (e.g. one-, two- and three-word anchors)")
    pairs = [ex for ex, k in zip(corpus.pairs, keep.tolist()) if k]
    spans = [span for span, k in zip(spans, keep.tolist()) if k]
    unsafe, anchor = unsafe.select(keep), anchor.select(keep)
    unsafe_labels = term_labels(pairs, spans, names, unsafe)
    benign_target = benign_labels(benign, len(names))
    weak_target = torch.tensor(corpus.weak_labels) if weak is not None else None

    # 3. Train the sanitizer alone.
    model = EmbeddingSanitizer(SanitizerConfig(
        embed_dim=encoder.embed_dim, concepts=tuple(names), pooled_dim=encoder.pooled_dim,
        chunk_length=encoder.chunk_length, max_tokens=encoder.max_tokens, width=config.width,
        layers=config.layers, heads=config.heads, encoder_family=encoder.family,
        encoder_name=encoder.name, prompt_prior=config.prompt_prior, prompt_probe=config.prompt_probe)).to(device)
    # The summary below reads prompts as the hosts will, with the words this file will record.
    words = vocabulary_record(concepts)
    model.metadata = {"training": {"vocabulary": words}}
    if config.prompt_prior:
        set_prompt_prior(model, [enc(prior_prompts(c), f"{c.name} terms") for c in concepts], benign)
    losses = fit(model, config, device, unsafe, anchor, unsafe_labels, benign, benign_target, weak, weak_target,
                 encoder.family, progress)
    if config.prompt_probe:
        set_prompt_probe(model, unsafe, [names.index(ex.concept) for ex in pairs], benign, weak, weak_target)

    # 4. Measure on held-out terms and prompts.
    # Each held-out example knows its concept: the summary reports (and warns of) each concept's changed share.
    examples, heldout_benign = heldout_sets(count, concepts, config.heldout_pairs_per_concept, config.heldout_benign,
                                            config.seed, set(corpus.benign))
    heldout_unsafe, owners = [ex.unsafe for ex in examples], [ex.concept for ex in examples]
    if on_stage:
        on_stage("held-out", len(heldout_unsafe) + len(heldout_benign))
    heldout = evaluate(model, encoder, heldout_unsafe, heldout_benign, config.encode_batch, DEFAULT_THRESHOLD,
                       owners)
    summary = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "encoder": encoder.name,
        "concepts": {c.name: {"train_terms": len(c.train_terms), "heldout_terms": len(c.heldout_terms),
                              "anchors": len(c.anchors), "safe_contexts": len(c.safe_contexts)}
                     for c in concepts},
        "data": {"unsafe_pairs": len(pairs), "benign": len(corpus.benign), "weak": len(corpus.weak),
                 "encoded_prompts": encoded_prompts,
                 "heldout_unsafe": len(heldout_unsafe), "heldout_benign": len(heldout_benign)},
        "config": {k: v for k, v in asdict(config).items() if k != "device"},
        "steps": config.steps,
        "final_losses": {k: round(v, 5) for k, v in losses.items()},
        "heldout": {**heldout, "threshold": DEFAULT_THRESHOLD} if heldout else heldout,
        "warnings": training_warnings(heldout),
        # The words the hosts look for where they have the text (vocabulary.py), as trained.
        "vocabulary": words,
        "train_seconds": round(time.time() - started, 1),
        "device": str(device),
    }
    return model.cpu(), summary


def sentence_vectors(cache: Cache, batch: int = 512) -> torch.Tensor:
    return torch.cat([sentence_vector(cache.embedding[i:i + batch].float(), cache.attention[i:i + batch])
                      for i in range(0, len(cache.embedding), batch)])


def prior_prompts(concept: Concept) -> list[str]:
    """The prompts that place a concept among sentence vectors: its train terms, phrased "a photo
    of <term>", since a bare word sits apart from prompts."""
    return [f"a photo of {term}" for term in concept.train_terms]


def prior_prompt_count(config: TrainConfig, concepts: Sequence[Concept]) -> int:
    """How many prompts the prior's placement encodes."""
    return sum(len(prior_prompts(c)) for c in concepts) if config.prompt_prior else 0


@torch.no_grad()
def set_prompt_prior(model: EmbeddingSanitizer, concept_terms: Sequence[Cache], benign: Cache) -> None:
    """A concept's direction is the mean sentence vector of its phrased train terms (a user's
    concept gets one from its own words); the benign corpus sets the centre and spread along
    it, so the prior reads in benign spreads."""
    direction = torch.stack([sentence_vectors(c).mean(0) for c in concept_terms])
    lean = sentence_vectors(benign) @ direction.T
    model.prior_direction.copy_(direction)
    model.prior_centre.copy_(lean.mean(0))
    model.prior_spread.copy_(lean.std(0).clamp_min(1e-6))


@torch.no_grad()
def set_prompt_probe(model: EmbeddingSanitizer, unsafe: Cache, unsafe_concepts: Sequence[int], benign: Cache,
                     weak: Optional[Cache], weak_target: Optional[torch.Tensor]) -> None:
    """Fit each concept's prompt-level probe: a logistic regression on sentence vectors against the
    benign corpus. Its positives are the real prompts labelled for the concept (I2P, for nudity)
    where the corpus has some, since a probe that also learns from the synthetic prompts learns
    their templates and ranks real prompts worse (docs/experiments.md); else the concept's own
    unsafe prompts, so a user's concept gets a probe from its own words. Each
    source weighs the same within its class, so the real negatives (I2P's other prompts, the
    hard line) are not drowned by the benign corpus.

    It is fitted after the network trains: trained with it in place, the network let benign
    tokens' scores drift wherever the probe already held them down."""
    unsafe_vectors, benign_vectors = sentence_vectors(unsafe), sentence_vectors(benign)
    weak_vectors = sentence_vectors(weak) if weak is not None else None
    owner = torch.tensor(unsafe_concepts)
    for c in range(len(model.concepts)):
        sources = [(benign_vectors, torch.zeros(len(benign_vectors)))]
        if weak is not None and (weak_target[:, c] >= 0.5).any():
            known = weak_target[:, c] != UNKNOWN
            sources.append((weak_vectors[known], weak_target[known, c].float()))
        elif (owner == c).any():
            sources.append((unsafe_vectors[owner == c], torch.ones(int((owner == c).sum()))))
        else:
            continue        # nothing to learn the concept from: its probe stays at 0
        xs, ys, weights = [], [], []
        for x, y in sources:
            for part in (y >= 0.5, y < 0.5):
                if part.any():
                    xs.append(x[part])
                    ys.append(y[part])
                    weights.append(torch.full((int(part.sum()),), 1.0 / int(part.sum())))
        direction, offset = LogisticProbe().fit(torch.cat(xs), torch.cat(ys), torch.cat(weights)).as_direction()
        model.probe_direction[c] = direction.to(model.probe_direction)
        model.probe_offset[c] = offset


def fit(model, config: TrainConfig, device, unsafe: Cache, anchor: Cache, unsafe_labels, benign: Cache,
        benign_target, weak: Optional[Cache], weak_target, family: str, progress) -> dict:
    """The training loop: per step a batch of pairs, twice as many benign prompts and half as many
    weak prompts; each loss is a mean over its tokens (or prompts) in the whole batch."""
    scale = feature_scale(benign).to(device)
    pooled_scale = (benign.pooled.float().std(dim=0).clamp_min(1e-3).to(device)
                    if benign.pooled is not None else None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    warmup = max(1, min(100, config.steps // 10))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / config.steps)))
    batches = Batches(device, config.seed)
    size = config.batch_size
    losses = {}
    bar = tqdm(range(config.steps), desc=f"training {family} sanitizer")
    model.train()
    for step in bar:
        sums = {k: torch.zeros((), device=device) for k in ("erase", "preserve", "score", "weak", "pooled")}
        counts = {k: torch.zeros((), device=device) for k in sums}

        def add(key, total, count):
            sums[key] = sums[key] + total
            counts[key] = counts[key] + count

        for idx, e_u, m_u, _, y_u, e_a in batches.draw(size, unsafe, unsafe_labels, anchor):
            out, s, g, pd = apply(model, e_u, m_u)
            add("erase", *masked_mse(out, e_a, m_u.float(), scale))
            known = y_u != UNKNOWN
            add("score", F.binary_cross_entropy(s[known], y_u[known], reduction="sum"), known.sum())
            if pooled_scale is not None:
                p_u, p_a = unsafe.pooled[idx].to(device).float(), anchor.pooled[idx].to(device).float()
                add("pooled", ((p_u + g.amax(1, keepdim=True) * pd - p_a) / pooled_scale).pow(2).mean(-1).sum(),
                    len(idx))
        for idx, e_b, m_b, _, y_b in batches.draw(2 * size, benign, benign_target):
            out, s, g, pd = apply(model, e_b, m_b)
            add("preserve", *masked_mse(out, e_b, m_b.float(), scale))
            known = y_b != UNKNOWN
            add("score", F.binary_cross_entropy(s[known], y_b[known], reduction="sum"), known.sum())
            if pooled_scale is not None:
                add("pooled", config.preserve_weight * ((g.amax(1, keepdim=True) * pd) / pooled_scale)
                    .pow(2).mean(-1).sum(), len(idx))
        if weak is not None:
            for _, e_w, m_w, r_w, y_w in batches.draw(size // 2, weak, weak_target):
                add("weak", *weak_loss(model(e_w, m_w)[0], r_w, y_w))
        mean = {k: sums[k] / counts[k].clamp_min(1) for k in sums}
        loss = (mean["erase"] + config.preserve_weight * mean["preserve"] + config.score_weight * mean["score"]
                + config.weak_weight * mean["weak"] + config.pooled_weight * mean["pooled"])
        losses = {k: v.item() for k, v in mean.items() if counts[k] > 0}
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % 10 == 0 or step == config.steps - 1:
            bar.set_postfix({k: f"{v:.4f}" for k, v in losses.items()})
        if progress:
            progress(step + 1, config.steps, losses)
    model.eval()
    return losses


def training_warnings(heldout: dict) -> list[str]:
    """Plain advice when the held-out figures show that the sanitizer detects too little, erases
    too little, or changes too many benign prompts."""
    if not heldout:
        return ["no held-out figures could be measured: no concept has held-out terms to test on "
                "(give 5 or more terms, so that some are kept back for testing)"]
    warnings = []
    if heldout["auroc"] < CHANCE_AUROC_WARNING:
        warnings.append(f"held-out detection is close to chance (AUROC {heldout['auroc']:.2f}; 0.5 is chance, "
                        f"1 is perfect): train longer, or with more pairs")
    shares = heldout.get("unsafe_touched_share_by_concept") or {"unsafe": heldout["unsafe_touched_share"]}
    for name, share in shares.items():
        if share < UNSAFE_TOUCHED_WARNING:
            warnings.append(f"only {100 * share:.0f}% of held-out '{name}' prompts were changed at the default "
                            f"threshold {DEFAULT_THRESHOLD:g} (target at least {100 * UNSAFE_TOUCHED_WARNING:.0f}%): "
                            f"train longer, or with more pairs")
    share = heldout["benign_touched_share"]
    if share > BENIGN_TOUCHED_WARNING:
        warnings.append(f"{100 * share:.1f}% of held-out benign prompts were changed (target at most "
                        f"{100 * BENIGN_TOUCHED_WARNING:.0f}%). Add harmless phrases that share words with your "
                        f"terms to 'safe_contexts' (for 'clown': 'a clownfish in a coral reef', 'the class clown'), "
                        f"check that no term is an everyday word, or train longer.")
    return warnings


def _percent(share: float) -> str:
    return f"{100 * share:.0f}%"


def summary_text(summary: dict) -> str:
    """A training summary in sentences, with its warnings: what the CLI's `train`, the Train node
    and release model cards say about a run."""
    h = summary.get("heldout") or {}
    lines = [f"Trained for {summary['encoder']} on {', '.join(summary['concepts'])} in {summary['steps']} steps "
             f"(seed {summary['config']['seed']}, {summary['train_seconds']} s on {summary['device']})."]
    if h:
        by_concept = h.get("unsafe_touched_share_by_concept", {})
        each = (" (" + ", ".join(f"{name} {_percent(share)}" for name, share in by_concept.items()) + ")"
                if len(by_concept) > 1 else "")
        lines += [
            f"On prompts with terms it never saw, it tells unsafe from benign prompts with AUROC {h['auroc']:.3f} "
            f"(0.5 is chance, 1 perfect) and catches {_percent(h['tpr_at_1pct_fpr'])} of the unsafe ones "
            f"when 1% of benign ones are flagged.",
            f"At the default threshold {h['threshold']:g} it changed {_percent(h['unsafe_touched_share'])} of "
            f"those unsafe prompts{each} and {100 * h['benign_touched_share']:.1f}% of {h['benign_prompts']} "
            f"benign ones; benign embeddings kept a mean cosine of {h['benign_cosine_mean']:.4f} to the original."]
    lines += [f"Warning: {w}" for w in summary["warnings"]]
    return "\n".join(lines)
