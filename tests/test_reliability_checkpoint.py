"""Faults in checkpoints and token caches: each one a one-line error (exit 2) or a documented
recovery, never a traceback, a lost file or a mixed run.

The fault table runs every fault through every entry point that reads checkpoints:
``WorldVLAPolicy.from_pretrained`` / ``WorldModel.from_pretrained`` (what ``serve`` and
``eval-*`` call), ``worldvla eval-world``, ``worldvla serve`` and ``worldvla train --resume``.
Resuming falls back to the older checkpoint beside a corrupt one, continues exactly (the final
weights file has the sha256 of an uninterrupted run's) and keeps the corrupt one under
``step_<n>.corrupt``. Then: a token cache from another image tokenizer or a changed episode
file, byte-reproducible weights files, and SIGKILLs at random moments of a CLI training run.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from worldvla import cli
from worldvla.data.episodes import Episode, write_episodes
from worldvla.data.token_cache import TokenCache, build_token_cache
from worldvla.errors import WorldVLAError
from worldvla.tokenizers.vq import VQTokenizer, vq_preset
from worldvla.train import checkpoint as ckpt
from worldvla.train.config import apply_overrides, train_preset
from worldvla.train.loop import train

# The debug preset (4 steps), a checkpoint every step, 2 kept: a run stopped at step 3 holds
# step_2 and step_3; resuming from step_2 trains 2 steps, from step_3 one.
SETTINGS = ["steps=4", "ckpt_every=1", "val_every=0", "keep_last=2"]
OLDER, NEWEST, FINAL = "step_00000002", "step_00000003", "step_00000004"


# ---------------------------------------------------------------------------- fixtures
def _episodes(path: Path, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    eps = [
        Episode(
            key=f"demo_{i}",
            actions=rng.normal(size=(10 + i, 4)).astype(np.float32),
            frames={"corner": rng.integers(0, 256, (10 + i, 16, 16, 3), dtype=np.uint8)},
            instruction=f"push the block {i % 2}",
            task=f"push-{i % 2}",
        )
        for i in range(6)
    ]
    write_episodes(path, eps, {"env": "test"})


def _tokenizer(seed: int, out: Path) -> VQTokenizer:
    torch.manual_seed(seed)
    tok = VQTokenizer(vq_preset("tiny-vq"))
    tok.init_codebook(np.random.default_rng(seed).integers(0, 256, (16, 16, 16, 3), dtype=np.uint8))
    tok.model.eval()
    tok.save(out)
    return tok


@dataclass(frozen=True)
class World:
    root: Path
    episodes: Path
    caches: tuple[Path, Path]  # the same episodes tokenized by tokenizers 0 and 1
    fingerprints: tuple[str, str]
    run: Path  # stopped at step 3 of 4: step_2 and step_3
    reference_sha: str  # model.safetensors of step 4 of the same run, uninterrupted


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    root = tmp_path_factory.mktemp("reliability")
    episodes = root / "eps.hdf5"
    _episodes(episodes)
    caches, fps = [], []
    for seed in (0, 1):
        tok = _tokenizer(seed, root / f"tok{seed}")
        cache = build_token_cache(
            episodes, tok, root / f"cache{seed}", tokenizer_path=root / f"tok{seed}", progress=False
        )
        caches.append(cache.path)
        fps.append(tok.fingerprint())
    cfg = apply_overrides(train_preset("debug"), SETTINGS)
    train(cfg, caches[0], root / "run", progress=False, stop_after=3)
    train(cfg, caches[0], root / "reference", progress=False)
    ref = root / "reference" / "checkpoints" / FINAL
    return World(
        root, episodes, (caches[0], caches[1]), (fps[0], fps[1]), root / "run", _sha(ref / ckpt.MODEL_FILE)
    )


# ---------------------------------------------------------------------------- helpers
def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` with its sha256: 'nothing written, nothing lost' is equality."""
    return {str(p.relative_to(root)): _sha(p) for p in sorted(root.rglob("*")) if p.is_file()}


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


def _flip_weights(c: Path) -> None:
    _flip(c / ckpt.MODEL_FILE, (c / ckpt.MODEL_FILE).stat().st_size - 5)  # the last tensor's data


def _flip_state(c: Path) -> None:
    """One bit inside the largest record of the trainer state archive (tensor data)."""
    path = c / ckpt.TRAINER_FILE
    with zipfile.ZipFile(path) as z:
        info = max(z.infolist(), key=lambda i: i.compress_size)
    raw = path.read_bytes()
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26 : info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len
    _flip(path, start + info.compress_size // 2)


def _edit_model_config(c: Path, **fields) -> None:
    doc = json.loads((c / ckpt.CONFIG_FILE).read_text())
    doc["model"].update(fields)
    (c / ckpt.CONFIG_FILE).write_text(json.dumps(doc, indent=2) + "\n")


def _bigger_vocab(c: Path) -> None:
    doc = json.loads((c / ckpt.CONFIG_FILE).read_text())
    _edit_model_config(c, vocab_size=doc["model"]["vocab_size"] + 8)


def _alter_manifest(c: Path) -> None:
    doc = json.loads((c / ckpt.MANIFEST_FILE).read_text())
    doc["files"][ckpt.VOCAB_FILE]["sha256"] = "0" * 64
    (c / ckpt.MANIFEST_FILE).write_text(json.dumps(doc))


def _legacy(fault: Callable[[Path], None] | None = None) -> Callable[[Path], None]:
    """A checkpoint written before manifests (no manifest.json), then ``fault``."""

    def apply(c: Path) -> None:
        (c / ckpt.MANIFEST_FILE).unlink()
        if fault is not None:
            fault(c)

    return apply


@dataclass(frozen=True)
class Fault:
    name: str
    apply: Callable[[Path], None]  # on the newest checkpoint (step_3)
    load_error: str | None  # a phrase of the inference error; None: inference loads it
    resume: str  # "fallback" to step_2 (with this phrase logged), "refuse" (exit 2 with it) or "continue"
    resume_phrase: str


def _truncate_weights(c: Path) -> None:
    _truncate(c / ckpt.MODEL_FILE)


def _truncate_state(c: Path) -> None:
    _truncate(c / ckpt.TRAINER_FILE)


def _wide_config(c: Path) -> None:
    _edit_model_config(c, d_model=128)  # the weights are d_model=64


def _drop_weights(c: Path) -> None:
    (c / ckpt.MODEL_FILE).unlink()


def _garble_manifest(c: Path) -> None:
    (c / ckpt.MANIFEST_FILE).write_text("{")


def _edit_inference(c: Path) -> None:
    (c / ckpt.INFERENCE_FILE).write_text(json.dumps({"action_readout": "mean"}) + "\n")


def _drop_inference(c: Path) -> None:
    (c / ckpt.INFERENCE_FILE).unlink()


F, R = "fallback", "refuse"
FAULTS = [
    Fault(
        "weights truncated",
        _truncate_weights,
        r"model\.safetensors: \d+ bytes, manifest\.json records",
        F,
        "truncated",
    ),
    Fault(
        "weights bit flip",
        _flip_weights,
        r"model\.safetensors: sha256 .* differs",
        F,
        "model.safetensors: sha256",
    ),
    Fault("trainer state truncated", _truncate_state, None, F, "trainer_state.pt: "),
    Fault("trainer state bit flip", _flip_state, None, F, "trainer_state.pt: sha256"),
    Fault(
        "config d_model != weights",
        _wide_config,
        r"config\.json: .*manifest\.json",
        F,
        "config.json: ",
    ),
    Fault("weights missing", _drop_weights, r"model\.safetensors: missing", F, "model.safetensors: missing"),
    Fault(
        "manifest entry altered", _alter_manifest, r"vocab\.json: sha256 .* differs", F, "vocab.json: sha256"
    ),
    Fault(
        "manifest unreadable", _garble_manifest, r"manifest\.json: unreadable", F, "manifest.json: unreadable"
    ),
    Fault(
        "inference defaults edited",
        _edit_inference,
        r"inference\.json: \d+ bytes, manifest\.json records",
        F,
        "inference.json: ",
    ),
    Fault(
        "inference defaults missing",
        _drop_inference,
        r"inference\.json: missing",
        F,
        "inference.json: missing",
    ),
    # Checkpoints written before manifests: what the formats allow to check.
    Fault("legacy, intact", _legacy(), None, "continue", ""),
    # ... and before inference.json (the readout then was a training field).
    Fault("legacy, no inference defaults", _legacy(_drop_inference), None, "continue", ""),
    Fault(
        "legacy, weights truncated",
        _legacy(_truncate_weights),
        "unreadable safetensors",
        F,
        "unreadable safetensors",
    ),
    Fault("legacy, trainer state bit flip", _legacy(_flip_state), None, F, "CRC-32"),
    Fault(
        "legacy, config d_model != weights",
        _legacy(_wide_config),
        r"does not fit the model .*d_model=128",
        R,
        r"model\.d_model: checkpoint 128 != requested 64",
    ),
    Fault(
        "legacy, config vocab != weights",
        _legacy(_bigger_vocab),
        r"vocab_size=\d+, vocab\.json \d+ ids",
        R,
        r"model\.vocab_size: checkpoint",
    ),
]


@pytest.fixture()
def run(world, tmp_path) -> Path:
    """A private copy of the stopped run to break."""
    return Path(shutil.copytree(world.run, tmp_path / "run"))


def _cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = cli.main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def _resume_args(world: World, run: Path, cache: Path | None = None) -> list[str]:
    sets = [a for s in SETTINGS for a in ("--set", s)]
    cache = cache or world.caches[0]
    return [
        "train",
        "--preset",
        "debug",
        "--cache",
        str(cache),
        "--out",
        str(run),
        "--resume",
        "--no-progress",
        *sets,
    ]


# ---------------------------------------------------------------------------- the fault table
@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
def test_inference_loading_reports_the_file_or_loads(fault, run):
    from worldvla.policy import WorldVLAPolicy
    from worldvla.world_model import WorldModel

    target = run / "checkpoints" / NEWEST
    fault.apply(target)
    before = _tree(run)
    if fault.load_error is None:
        policy = WorldVLAPolicy.from_pretrained(target)
        assert policy.bundle.step == 3
    else:
        for load in (WorldVLAPolicy.from_pretrained, WorldModel.from_pretrained, ckpt.load_for_inference):
            with pytest.raises(WorldVLAError, match=fault.load_error) as e:
                load(target)
            assert "\n" not in str(e.value)
            assert str(target) in str(e.value)
        # Through the run directory, too (what `serve RUN` and `eval-world RUN` get): no silent
        # fallback, but the older checkpoint is named.
        with pytest.raises(WorldVLAError, match=fault.load_error) as e:
            WorldVLAPolicy.from_pretrained(run)
        assert str(e.value).endswith(f"an older checkpoint of the run: {run / 'checkpoints' / OLDER}")
    assert _tree(run) == before


@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
def test_train_resume_falls_back_or_refuses(fault, world, run, capsys):
    corrupt = run / "checkpoints" / NEWEST
    fault.apply(corrupt)
    before = _tree(run)
    broken = _tree(corrupt)
    code, out, err = _cli(_resume_args(world, run), capsys)
    if fault.resume == "refuse":
        assert code == 2, out + err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("worldvla train: error: ")
        assert re.search(fault.resume_phrase, err), err
        assert _tree(run) == before  # nothing written, nothing lost
        return
    assert code == 0, err
    assert "Traceback" not in err
    final = run / "checkpoints" / FINAL
    if fault.resume == "fallback":
        assert f"resumed from {run / 'checkpoints' / OLDER} at step 2" in out
        skip = [line for line in out.splitlines() if line.startswith(f"skipped checkpoint {NEWEST}")]
        assert len(skip) == 1 and fault.resume_phrase in skip[0], out
        # The corrupt checkpoint is kept, byte for byte, under another name.
        aside = run / "checkpoints" / (NEWEST + ckpt.CORRUPT_SUFFIX)
        assert _tree(aside) == broken
        assert ckpt.latest_checkpoint(run) == final
    else:
        assert f"resumed from {corrupt} at step 3" in out
    # Exact resume: the final weights file is the uninterrupted run's, byte for byte.
    assert _sha(final / ckpt.MODEL_FILE) == world.reference_sha


def test_resume_with_no_intact_checkpoint_changes_nothing(world, run, capsys):
    _truncate(run / "checkpoints" / NEWEST / ckpt.MODEL_FILE)
    _flip_state(run / "checkpoints" / OLDER)
    before = _tree(run)
    code, out, err = _cli(_resume_args(world, run), capsys)
    assert code == 2
    assert "no checkpoint to resume from verifies" in err
    assert f"{NEWEST}/model.safetensors" in err and f"{OLDER}/trainer_state.pt" in err
    assert len(err.strip().splitlines()) == 1
    assert _tree(run) == before


@pytest.mark.parametrize(
    "fault",
    [
        f
        for f in FAULTS
        if f.load_error and f.name in ("weights truncated", "legacy, config d_model != weights")
    ],
    ids=lambda f: f.name,
)
@pytest.mark.parametrize("command", ["eval-world", "serve"])
def test_cli_loaders_exit_2_with_one_line(fault, command, world, run, capsys, monkeypatch):
    from worldvla.serving.server import PolicyServer

    def never(self):
        raise AssertionError("the server started on a corrupt checkpoint")

    monkeypatch.setattr(PolicyServer, "serve_forever", never)
    target = run / "checkpoints" / NEWEST
    fault.apply(target)
    before = _tree(run)
    if command == "eval-world":
        # The default output folder lies beside the checkpoint: it must not appear.
        args = ["eval-world", str(target), "--episodes", str(world.episodes), "--lengths", "1"]
    else:
        args = ["serve", str(target), "--port", "0"]
    code, _, err = _cli(args, capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and re.search(fault.load_error, err), err
    assert _tree(run) == before and not (run / "checkpoints" / "eval_world").exists()


# ---------------------------------------------------------------------------- the data
def test_resume_refuses_a_cache_from_another_image_tokenizer(world, run, capsys):
    before = _tree(run)
    code, _, err = _cli(_resume_args(world, run, cache=world.caches[1]), capsys)
    assert code == 2
    assert "image tokenizer" in err and world.fingerprints[0] in err and world.fingerprints[1] in err
    assert len(err.strip().splitlines()) == 1
    assert _tree(run) == before
    # The checkpoint records the episode file too.
    recorded = json.loads((run / "checkpoints" / NEWEST / ckpt.CONFIG_FILE).read_text())["episodes"]
    assert recorded["sha256"] == _sha(world.episodes) and recorded["name"] == "eps.hdf5"


def test_resume_refuses_a_cache_of_another_episode_file(world, run, tmp_path, capsys):
    other = tmp_path / "eps.hdf5"
    _episodes(other, seed=1)
    tok = _tokenizer(0, tmp_path / "tok")
    build_token_cache(other, tok, tmp_path / "cache", tokenizer_path=tmp_path / "tok", progress=False)
    before = _tree(run)
    code, _, err = _cli(_resume_args(world, run, cache=tmp_path / "cache"), capsys)
    assert code == 2
    assert "episode file" in err and _sha(world.episodes)[:12] in err and _sha(other)[:12] in err
    assert _tree(run) == before


def test_training_refuses_a_cache_whose_episode_file_changed(world, tmp_path, capsys):
    episodes = tmp_path / "eps.hdf5"
    shutil.copy(world.episodes, episodes)
    tok = _tokenizer(0, tmp_path / "tok")
    build_token_cache(episodes, tok, tmp_path / "cache", tokenizer_path=tmp_path / "tok", progress=False)
    _episodes(episodes, seed=2)  # re-collected in place after tokenizing
    out = tmp_path / "run"
    code, _, err = _cli(
        ["train", "--preset", "debug", "--cache", str(tmp_path / "cache"), "--out", str(out)], capsys
    )
    assert code == 2 and "changed since tokenizing" in err and str(episodes) in err
    assert not out.exists()
    # A cache whose episode file is gone is self-contained: it opens (unverifiable, not wrong).
    episodes.unlink()
    assert len(TokenCache.open(tmp_path / "cache", verify_source=True)) == 6


def test_the_train_command_sets_the_inference_defaults_of_its_checkpoints(world, tmp_path, capsys):
    """mw-quick's checkpoints read actions out as the expected bin; --readout chooses another."""
    base = [
        "train",
        "--cache",
        str(world.caches[0]),
        "--no-progress",
        "--set",
        "steps=1",
        "--set",
        "val_every=0",
    ]
    for preset, readout, want in (
        ("debug", None, "argmax"),
        ("mw-quick-debug", None, "mean"),
        ("debug", "mean", "mean"),
    ):
        out = tmp_path / f"{preset}-{readout}"
        extra = ["--readout", readout] if readout else []
        code, _, err = _cli([*base, "--preset", preset, "--out", str(out), *extra], capsys)
        assert code == 0, err
        assert ckpt.load_bundle(out).inference.action_readout == want, (preset, readout)


# ---------------------------------------------------------------------------- byte reproducibility
def test_the_same_weights_give_the_same_file_bytes(world, tmp_path):
    """safetensors keeps metadata in a hash map; with two keys the bytes varied run to run."""
    weights = ckpt.load_model_state(world.run / "checkpoints" / NEWEST)
    bundle = ckpt.load_bundle(world.run / "checkpoints" / NEWEST)
    hashes = set()
    for i in range(6):
        saved = ckpt.save_checkpoint(
            tmp_path / f"run{i}",
            3,
            weights,
            {"step": 3, "data_pos": 12, "tokens_seen": 0, "optimizer": {}, "rng": []},
            bundle.config,
            bundle.model_config,
            bundle.layout,
            bundle.vocab,
            bundle.action_stats,
            bundle.image_tokenizer_ref,
            bundle.val_episodes,
            keep_last=1,
        )
        hashes.add(_sha(saved / ckpt.MODEL_FILE))
    assert hashes == {_sha(world.run / "checkpoints" / NEWEST / ckpt.MODEL_FILE)}


# ---------------------------------------------------------------------------- SIGKILL
def _logged_step(run: Path, since_ns: int) -> int:
    """The last step in metrics.jsonl once a process started at ``since_ns`` wrote it; else -1."""
    path = run / "metrics.jsonl"
    try:
        if path.stat().st_mtime_ns < since_ns:
            return -1
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return -1
    steps = [0]
    for line in lines:
        try:
            steps.append(int(json.loads(line)["step"]))
        except (ValueError, KeyError, TypeError):
            continue  # a line being written
    return max(steps)


def test_sigkill_at_random_moments_then_resume_equals_an_uninterrupted_run(world, tmp_path):
    """Three SIGKILLs at seeded random moments of a CLI run (a random step of each third of the
    run, then a random delay: inside a step, a checkpoint write or pruning); each time resume;
    the final weights file equals an uninterrupted run's, byte for byte."""
    steps = 10
    args = ["--preset", "debug", "--cache", str(world.caches[0]), "--no-progress"]
    args += ["--set", f"steps={steps}", "--set", "ckpt_every=1", "--set", "val_every=0"]
    run = tmp_path / "killed"
    rng = random.Random(17)
    kills = 0
    for low, high in ((1, 3), (4, 6), (7, 8)):
        target, delay = rng.randint(low, high), rng.uniform(0.0, 0.25)
        resume = ["--resume"] if ckpt.latest_checkpoint(run) is not None else []
        launched = time.time_ns()
        child = subprocess.Popen(
            [sys.executable, "-m", "worldvla.cli", "train", *args, "--out", str(run), *resume],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and child.poll() is None and _logged_step(run, launched) < target:
            time.sleep(0.005)
        time.sleep(delay)
        if child.poll() is None:
            child.send_signal(signal.SIGKILL)
            kills += 1
        _, err = child.communicate()
        assert b"Traceback" not in err, err.decode()
        latest = ckpt.latest_checkpoint(run)
        if latest is not None:
            ckpt.load_trainer_state(latest)  # what is left verifies
    assert kills == 3, "the run finished before a kill: make it longer"
    resume = ["--resume"] if ckpt.latest_checkpoint(run) is not None else []
    done = subprocess.run(
        [sys.executable, "-m", "worldvla.cli", "train", *args, "--out", str(run), *resume],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    clean = tmp_path / "clean"
    subprocess.run(
        [sys.executable, "-m", "worldvla.cli", "train", *args, "--out", str(clean)],
        check=True,
        capture_output=True,
    )
    name = f"step_{steps:08d}"
    assert _sha(run / "checkpoints" / name / ckpt.MODEL_FILE) == _sha(
        clean / "checkpoints" / name / ckpt.MODEL_FILE
    )
    assert ckpt.latest_checkpoint(run).name == name
    losses = [r["loss"] for r in _train_rows(run)]
    assert [r["step"] for r in _train_rows(run)] == list(range(1, steps + 1))
    assert losses == [r["loss"] for r in _train_rows(clean)]


def _train_rows(run: Path) -> list[dict]:
    from worldvla.train.logs import read_metrics

    return read_metrics(run)
