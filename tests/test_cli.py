import json
import subprocess
import sys

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def cli(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "embedding_sanitizer", *args], cwd=ROOT, input=stdin,
                          capture_output=True, text=True, timeout=300)


def test_score_json_for_one_prompt():
    out = cli("score", "--json", "a nude woman on a beach")
    assert out.returncode == 0, out.stderr
    [line] = out.stdout.strip().splitlines()
    result = json.loads(line)
    assert result["prompt"] == "a nude woman on a beach"
    assert [t["token"] for t in result["tokens"]] == ["a", "nude", "woman", "on", "a", "beach"]
    nude = result["tokens"][1]
    assert nude["score"] > 0.5 and nude["gate"] > 0.5 and nude["concept"] == "nudity"
    assert result["prompt_score"] == max(t["score"] for t in result["tokens"])
    assert 0 < result["cosine"] < 0.999


def test_score_many_prompts_from_stdin_plain_when_piped(tmp_path):
    prompts = "a cat on a sofa\na bloody decapitated corpse\n\na bowl of fruit\n"
    out = cli("score", stdin=prompts)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 3 and "\033[" not in out.stdout
    scores = [float(line.split()[0]) for line in lines]
    assert scores[1] > 0.5 > max(scores[0], scores[2])
    (tmp_path / "p.txt").write_text(prompts)
    json_lines = cli("score", "--json", "--file", str(tmp_path / "p.txt")).stdout.strip().splitlines()
    assert [json.loads(x)["prompt"] for x in json_lines] == ["a cat on a sofa", "a bloody decapitated corpse",
                                                             "a bowl of fruit"]


def test_each_argument_is_a_prompt_and_emoji_or_full_width_text_fits_the_window():
    long_prompt = "a cat " * 100 + "naked"
    out = cli("score", "--json", "a cat on a sofa \U0001F600", "\uff4e\uff55\uff44\uff45 woman", long_prompt)
    assert out.returncode == 0, out.stderr
    results = [json.loads(line) for line in out.stdout.strip().splitlines()]
    assert [r["prompt"] for r in results] == ["a cat on a sofa \U0001F600", "\uff4e\uff55\uff44\uff45 woman", long_prompt.strip()]
    # The emoji and the full-width word are one [UNK] token each, well inside the 128-token window.
    assert [r["truncated"] for r in results] == [False, False, True]
    assert out.stderr.count("longer than the encoder's 128-token window") == 1


def test_intensity_zero_leaves_the_embedding_alone():
    result = json.loads(cli("score", "--json", "--intensity", "0", "a naked man").stdout)
    assert result["cosine"] == 1.0 and all(t["gate"] == 0 for t in result["tokens"])


def test_bad_weights_give_a_clear_error(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 100)
    out = cli("score", "--weights", str(bad), "a cat")
    assert out.returncode != 0 and "error: bad.safetensors" in out.stderr and "Traceback" not in out.stderr


def test_demo_runs_offline():
    """How long it takes is benchmarks/demo.py's figure, not an assertion: a busy machine is slow."""
    out = subprocess.run([sys.executable, "-m", "embedding_sanitizer", "demo"], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                                           "PATH": "/usr/bin:/bin", "CUDA_VISIBLE_DEVICES": ""})
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("prompt score") == 6 and "held-out AUROC" in out.stdout


@pytest.mark.slow
def test_measure_on_the_shared_prompt_sets():
    if not SHARED_DATA.exists():
        pytest.skip(f"no evaluation data at {SHARED_DATA}")
    out = cli("measure", "--limit", "200", "--n-synth", "20")
    assert out.returncode == 0, out.stderr
    rows = {line.split("|")[1].strip(): line for line in out.stdout.splitlines() if line.startswith("| ")}
    assert {"training lexicon terms", "held-out lexicon terms", "adversarial: misspelling", "benign tag-style prompts",
            "I2P nudity >= 50 vs COCO captions", "I2P nudity >= 50 vs non-sexual I2P (hard), nudity erased",
            "held-out terms, explicit sentences", "held-out terms, explicit tags"} <= set(rows)
    # Sanitizer, zero-shot and supervised AUROC side by side on the real rows.
    sanitizer, zero_shot, supervised = rows["I2P nudity >= 50 vs COCO captions"].split("|")[4].split("/")
    assert all(0.5 < float(x) <= 1 for x in (sanitizer, zero_shot, supervised))
    assert "threshold 0.5" in out.stdout
    # What the gates actually do at that threshold: the share of unsafe prompts changed at all
    # (58.5% of 200 held-out prompts with the embedded default; 20 prompts move it by 5 points each).
    changed = {row: float(rows[row].split("|")[6].strip().rstrip("%"))
               for row in ("training lexicon terms", "held-out lexicon terms")}
    assert 35 <= changed["held-out lexicon terms"] <= 100
    # Plain prompts naming a listed term (99.5% of 200 changed: read as words) are caught more often than unseen terms.
    assert changed["training lexicon terms"] >= max(75, changed["held-out lexicon terms"])


# ----------------------------------------------------------------------------- malformed input (issue 10, class 8)

def cli_bytes(*args, stdin=b""):
    return subprocess.run([sys.executable.encode(), b"-m", b"embedding_sanitizer", *args], cwd=ROOT, input=stdin,
                          capture_output=True, timeout=300)


def one_line_error(out, fragment):
    stderr = out.stderr if isinstance(out.stderr, str) else out.stderr.decode("utf-8", "replace")
    assert out.returncode == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0] and fragment in lines[0], stderr
    assert "Traceback" not in stderr


@pytest.mark.parametrize("args, stdin, fragment", [
    ((b"score", b"a \xff\xfe cat"), b"", "not valid UTF-8"),
    ((b"score",), b"a cat\n\xff\xfe\x00binary", "stdin is not UTF-8"),
    ((b"score",), b"a cat\n\x00\x00\x00", "binary data"),
    ((b"score", b"--file", b"/"), b"", "cannot read /"),
    ((b"score", b"--file", b"/nonexistent/prompts.txt"), b"", "cannot read"),
    ((b"score", b"--intensity", b"nan", b"--json", b"a cat"), b"", "intensity must be a number"),
    ((b"score", b"--intensity", b"inf", b"a cat"), b"", "intensity must be a number"),
    ((b"score", b"--threshold", b"-1", b"a cat"), b"", "threshold must be a number"),
    ((b"score", b"--threshold", b"abc", b"a cat"), b"", "not a number"),
    ((b"score", b""), b"", "prompt argument is empty"),
    ((b"score", b"   "), b"", "prompt argument is empty"),
    ((b"score", b"a cat", b" "), b"", "prompt argument 2 is empty"),
    ((b"score", b"--file", b"/dev/zero"), b"", "/dev/zero holds more than 16 MiB"),
    ((b"score",), b"a cat\n" * (3 * 2 ** 20), "stdin holds more than 16 MiB"),
    ((b"score", b"--concepts", b"nudityy", b"a cat"), b"", "unknown concept"),
    ((b"score", b"--concepts", b" , ", b"a cat"), b"", "names no concept"),
    ((b"train", b"--concepts", b"nudityy", b"--out", b"/tmp/x.safetensors"), b"", "unknown built-in"),
])
def test_malformed_input_is_a_one_line_error_with_status_2(args, stdin, fragment):
    one_line_error(cli_bytes(*args, stdin=stdin), fragment)


def test_concepts_with_spaces_and_long_prompts_reported_as_truncated():
    long_prompt = "a cat " * 100 + "naked nude bloody corpse"
    out = cli("score", "--json", "--concepts", "nudity, violence", long_prompt)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["truncated"] is True
    assert "longer than the encoder's 128-token window" in out.stderr and "not scored" in out.stderr
    short = json.loads(cli("score", "--json", "--concepts", "nudity, violence", "a nude woman").stdout)
    assert short["truncated"] is False and short["tokens"][1]["erased"]


class EncoderLoaded(Exception):
    """train got past its checks to the (slow) loading of the encoder."""


def load_no_encoder(*args):
    raise EncoderLoaded


@pytest.mark.parametrize("extra, fragment", [
    (("--steps", "0"), "steps must be a whole number of at least 1"),
    (("--pairs", "0"), "pairs_per_concept must be a whole number of at least 1"),
    (("--benign", "-1"), "benign must be"),
    (("--concepts", "nudity", "--concepts-file", "{clowns_as_nudity}"), "'nudity' is given twice"),
    (("--concepts-file", "{long_name}"), "longer than 64 characters"),
    (("--concepts-file", "{terms_as_text}"), "terms must be a list of strings"),
])
def test_train_checks_every_argument_before_loading_the_encoder(tmp_path, monkeypatch, capsys, extra, fragment):
    from embedding_sanitizer import __main__, encoders

    monkeypatch.setattr(encoders, "load_encoder", load_no_encoder)
    files = {"clowns_as_nudity": {"name": "nudity", "terms": ["clown"], "anchors": ["juggler"]},
             "long_name": {"name": "c" * 100, "terms": ["clown"], "anchors": ["juggler"]},
             "terms_as_text": {"name": "clowns", "terms": "clown", "anchors": ["juggler"]}}
    for name, entry in files.items():
        (tmp_path / f"{name}.json").write_text(json.dumps({"concepts": [entry]}))
    extra = [a.format(**{name: tmp_path / f"{name}.json" for name in files}) for a in extra]
    with pytest.raises(SystemExit) as exited:
        __main__.main(["train", "--out", str(tmp_path / "new.safetensors"), *extra])
    stderr = capsys.readouterr().err
    assert exited.value.code == 2 and fragment in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert not (tmp_path / "new.safetensors").exists()


def test_train_refuses_an_out_it_could_not_write_or_would_overwrite(tmp_path, monkeypatch, capsys):
    from embedding_sanitizer import __main__, encoders

    monkeypatch.setattr(encoders, "load_encoder", load_no_encoder)
    existing = tmp_path / "old.safetensors"
    existing.write_bytes(b"keep me")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for out, fragment in [(existing, "exists; pass --force"), (tmp_path, "is a folder"),
                          (blocker / "sub" / "x.safetensors", "is not a folder you can write to"),
                          (tmp_path / ("x" * 300 + ".safetensors"), "too long")]:
        with pytest.raises(SystemExit):
            __main__.main(["train", "--out", str(out)])
        stderr = capsys.readouterr().err
        assert fragment in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert existing.read_bytes() == b"keep me"
    # With --force the existing file passes the checks and training would start.
    with pytest.raises(EncoderLoaded):
        __main__.main(["train", "--out", str(existing), "--force"])
