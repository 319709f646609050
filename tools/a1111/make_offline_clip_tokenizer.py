"""Put openai/clip-vit-large-patch14's tokenizer files and text config into a Hugging Face
cache folder, built offline from open-clip-torch's bundled BPE vocabulary (the same
vocabulary CLIP uses), so AUTOMATIC1111 can start with HF_HUB_OFFLINE=1 and no download.

    python tools/a1111/make_offline_clip_tokenizer.py <HF_HOME>
    HF_HOME=<HF_HOME> HF_HUB_OFFLINE=1 python launch.py ...

Only the text model's config is written (the webui builds CLIP from its config and then
loads the weights from the checkpoint).
"""

import gzip
import json
import sys
from pathlib import Path

REPO = "openai/clip-vit-large-patch14"
REVISION = "0" * 40
TEXT_CONFIG = {
    "architectures": ["CLIPTextModel"], "model_type": "clip_text_model", "hidden_act": "quick_gelu",
    "hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12, "num_hidden_layers": 12,
    "max_position_embeddings": 77, "vocab_size": 49408, "projection_dim": 768, "layer_norm_eps": 1e-5,
    "attention_dropout": 0.0, "dropout": 0.0, "initializer_factor": 1.0, "initializer_range": 0.02,
    "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1, "torch_dtype": "float32",
}


def bytes_to_unicode() -> dict:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def main(hf_home: str) -> None:
    import open_clip
    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    merges = gzip.open(bpe).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    pairs = [tuple(m.split()) for m in merges]
    chars = list(bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars] + ["".join(p) for p in pairs] + ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408, len(vocab)
    repo = Path(hf_home) / "hub" / ("models--" + REPO.replace("/", "--"))
    snap = repo / "snapshots" / REVISION
    snap.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(REVISION)
    (snap / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (snap / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(p) for p in pairs) + "\n")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
               "pad_token": "<|endoftext|>"}
    (snap / "special_tokens_map.json").write_text(json.dumps(special))
    (snap / "tokenizer_config.json").write_text(json.dumps({**special, "model_max_length": 77,
                                                            "do_lower_case": True, "errors": "replace",
                                                            "add_prefix_space": False,
                                                            "tokenizer_class": "CLIPTokenizer"}))
    (snap / "config.json").write_text(json.dumps(TEXT_CONFIG))
    print(f"wrote {REPO} tokenizer + text config into {snap}")


if __name__ == "__main__":
    main(sys.argv[1])
