"""Bad inputs through the command line: one readable line, exit 2, nothing written or lost.

Each case of :data:`CASES` is a command line over tiny inputs (episode files, a random
checkpoint, token caches), the exit status, a phrase of the message, and the check that
every file and folder of the test's sandbox — the inputs included — is exactly as it was.
The budget tests at the end run the pipeline's training stages on a tiny synthetic run:
a capped run is marked cut short everywhere, an uncapped one runs its full step budget.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from worldvla.cli import main as cli
from worldvla.data.episodes import Episode, write_episodes

CAMERA = "corner"


def _episodes(action_dim: int, size: int = 32, n: int = 4, length: int = 8, seed: int = 0) -> list[Episode]:
    rng = np.random.default_rng(seed)
    return [
        Episode(
            key=f"task-{i % 2}/{i}",
            actions=rng.uniform(-1, 1, (length, action_dim)).astype(np.float32),
            frames={CAMERA: rng.integers(0, 256, (length, size, size, 3), dtype=np.uint8)},
            instruction=f"press button {i % 2}",
            task=f"task-{i % 2}",
        )
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """Inputs shared by the cases (read-only by contract: every case checks they are unchanged)."""
    from worldvla.data.token_cache import CODES_FILE, build_token_cache
    from worldvla.serving.random_checkpoint import TOKENIZER_DIR, write_random_checkpoint
    from worldvla.tokenizers.image_loader import load_image_tokenizer

    root = tmp_path_factory.mktemp("inputs")
    write_episodes(root / "eps4.hdf5", _episodes(4))
    write_episodes(root / "eps7.hdf5", _episodes(7))
    write_random_checkpoint(root / "run", action_dim=4, image_size=32, chunk_len=3, history=1, camera=CAMERA)
    tok = load_image_tokenizer(root / "run" / TOKENIZER_DIR)
    build_token_cache(root / "eps4.hdf5", tok, root / "cache", camera=CAMERA, progress=False)
    shutil.copytree(root / "cache", root / "bad_cache")
    codes = np.memmap(root / "bad_cache" / CODES_FILE, dtype=np.uint16, mode="r+")
    codes[:] = 60_000  # far outside the 1,000-code codebook
    codes.flush()
    del codes
    (root / "empty").mkdir()
    (root / "a_file.txt").write_text("not a folder\n")
    return root


@pytest.fixture()
def unwritable(tmp_path) -> Path:
    """A folder that cannot be written: read-only for a normal user; for root, which ignores
    permission bits, a system folder that refuses new entries."""
    ro = tmp_path / "readonly"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        (ro / ".probe").touch()
    except OSError:
        yield ro
    else:
        (ro / ".probe").unlink()
        if not os.access("/sys", os.F_OK):
            pytest.skip("no unwritable folder available to this user")
        yield Path("/sys")
    ro.chmod(0o755)


def _snapshot(*roots: Path) -> dict[str, str]:
    """Every path under ``roots`` with the sha256 of its bytes (folders: 'dir')."""
    out = {}
    for root in roots:
        for p in sorted(root.rglob("*")):
            out[str(p)] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@dataclass(frozen=True)
class Case:
    id: str
    argv: Callable[[Path, Path, Path], list[str]]  # (inputs, sandbox, unwritable) -> argv
    phrase: str  # expected in the one-line message
    code: int = 2


CASES = [
    # collect: an existing episode file is never replaced without --overwrite.
    Case(
        "collect-existing-file",
        lambda i, s, u: ["collect", "--preset", "debug", "--out", str(i / "eps4.hdf5")],
        "already exists; pass --overwrite",
    ),
    Case(
        "collect-out-is-a-folder",
        lambda i, s, u: ["collect", "--preset", "debug", "--out", str(i / "empty")],
        "is a folder",
    ),
    Case(
        "collect-unwritable",
        lambda i, s, u: ["collect", "--preset", "debug", "--out", str(u / "x" / "eps.hdf5")],
        "not writable",
    ),
    Case(
        "collect-under-a-file",
        lambda i, s, u: ["collect", "--preset", "debug", "--out", str(i / "a_file.txt" / "eps.hdf5")],
        "is a file, not a folder",
    ),
    # report: nothing to report is an error, not an empty report.
    Case("report-missing", lambda i, s, u: ["report", str(s / "nope")], "does not exist"),
    Case("report-empty", lambda i, s, u: ["report", str(i / "empty")], "no run results"),
    Case("report-a-file", lambda i, s, u: ["report", str(i / "a_file.txt")], "is not a folder"),
    # evaluations: a missing checkpoint creates no folders next to it.
    Case(
        "eval-policy-missing-checkpoint",
        lambda i, s, u: ["eval-policy", str(s / "nope" / "run"), "--suite", "debug"],
        "checkpoint not found",
    ),
    Case(
        "eval-world-missing-checkpoint",
        lambda i, s, u: ["eval-world", str(s / "nope" / "run"), "--episodes", str(i / "eps4.hdf5")],
        "checkpoint not found",
    ),
    # probe-world: every bad argument is named before the simulator starts or a file is written.
    Case(
        "probe-world-no-held-out-episode",
        lambda i, s, u: [
            "probe-world",
            str(i / "run"),
            "--episodes",
            str(i / "eps4.hdf5"),
            "--actions",
            "zero",
        ],
        "records no held-out episode; choose one with --episode",
    ),
    Case(
        "probe-world-unknown-episode",
        lambda i, s, u: [
            *("probe-world", str(i / "run"), "--episodes", str(i / "eps4.hdf5")),
            *("--actions", "zero", "--episode", "task-9/9"),
        ],
        "no episode 'task-9/9'",
    ),
    Case(
        "probe-world-unknown-actions",
        lambda i, s, u: [
            *("probe-world", str(i / "run"), "--episodes", str(i / "eps4.hdf5")),
            *("--actions", "sideways", "--episode", "demo_0"),
        ],
        "unknown action sequence 'sideways'",
    ),
    Case(
        "probe-world-actions-out-of-range",
        lambda i, s, u: [
            *("probe-world", str(i / "run"), "--episodes", str(i / "eps4.hdf5")),
            *("--actions", "hold:0,0,3,0", "--episode", "demo_0"),
        ],
        "must lie in [-1, 1]",
    ),
    Case(
        "probe-world-start-step-beyond-the-episode",
        lambda i, s, u: [
            *("probe-world", str(i / "run"), "--episodes", str(i / "eps4.hdf5")),
            *("--actions", "zero", "--episode", "demo_0", "--start-step", "8"),
        ],
        "--start-step must be in 0..7 for episode 'demo_0'",
    ),
    Case(
        "probe-world-store-without-suite",
        lambda i, s, u: [
            *("probe-world", str(i / "run"), "--episodes", str(i / "eps4.hdf5")),
            *("--actions", "zero", "--episode", "demo_0"),
        ],
        "does not record one (give --suite)",
    ),
    Case(
        "probe-world-unwritable-out",
        lambda i, s, u: [
            *("probe-world", str(i / "run"), "--episodes", str(i / "eps4.hdf5")),
            *("--actions", "zero", "--out", str(u / "probe")),
        ],
        "not writable",
    ),
    Case(
        "eval-actions-missing-checkpoint",
        lambda i, s, u: ["eval-actions", str(s / "nope" / "run"), "--episodes", str(i / "eps4.hdf5")],
        "checkpoint not found",
    ),
    Case(
        "eval-actions-missing-episodes",
        lambda i, s, u: ["eval-actions", str(i / "run"), "--episodes", str(s / "nope.hdf5")],
        "episode file not found",
    ),
    Case(
        "eval-actions-7d-episodes-on-a-4d-checkpoint",
        lambda i, s, u: ["eval-actions", str(i / "run"), "--episodes", str(i / "eps7.hdf5")],
        "holds 7-D actions but the checkpoint",
    ),
    Case(
        "eval-world-7d-episodes-on-a-4d-checkpoint",
        lambda i, s, u: ["eval-world", str(i / "run"), "--episodes", str(i / "eps7.hdf5")],
        "trained on 4-D actions",
    ),
    Case(
        "eval-policy-7d-replay-episodes",
        lambda i, s, u: [
            "eval-policy",
            str(i / "run"),
            "--suite",
            "debug",
            "--episodes",
            str(i / "eps7.hdf5"),
        ],
        "holds 7-D actions",
    ),
    Case(
        "eval-policy-unwritable-out",
        lambda i, s, u: ["eval-policy", str(i / "run"), "--suite", "debug", "--out", str(u / "ev")],
        "not writable",
    ),
    # train: refused before any step.
    Case(
        "train-codes-out-of-range",
        lambda i, s, u: ["train", "--cache", str(i / "bad_cache"), "--out", str(s / "run")],
        "image codes reach 60000 but the cache's codebook has 1000 codes",
    ),
    Case(
        "train-negative-minutes",
        lambda i, s, u: ["train", "--cache", str(i / "cache"), "--out", str(s / "run"), "--minutes", "-5"],
        "--minutes (a time cap) must be a positive number",
    ),
    Case(
        "train-zero-minutes",
        lambda i, s, u: ["train", "--cache", str(i / "cache"), "--out", str(s / "run"), "--minutes", "0"],
        "must be a positive number",
    ),
    Case(
        "train-resume-nothing",
        lambda i, s, u: ["train", "--cache", str(i / "cache"), "--out", str(s / "run"), "--resume"],
        "nothing to resume (no checkpoint)",
    ),
    Case(
        "train-unwritable-out",
        lambda i, s, u: ["train", "--cache", str(i / "cache"), "--out", str(u / "run")],
        "not writable",
    ),
    Case(
        "train-missing-cache",
        lambda i, s, u: ["train", "--cache", str(s / "nope"), "--out", str(s / "run")],
        "token cache not found",
    ),
    # tokenizer and token cache.
    Case(
        "train-tokenizer-missing-episodes",
        lambda i, s, u: ["train-tokenizer", "--episodes", str(s / "nope.hdf5"), "--out", str(s / "tok")],
        "episode file not found",
    ),
    Case(
        "train-tokenizer-out-is-a-file",
        lambda i, s, u: [
            "train-tokenizer",
            "--episodes",
            str(i / "eps4.hdf5"),
            "--out",
            str(i / "a_file.txt"),
        ],
        "is a file, not a folder",
    ),
    Case(
        "train-tokenizer-zero-minutes",
        lambda i, s, u: [
            "train-tokenizer",
            "--episodes",
            str(i / "eps4.hdf5"),
            "--out",
            str(s / "t"),
            "--minutes",
            "0",
        ],
        "must be a positive number",
    ),
    Case(
        "tokenize-missing-tokenizer",
        lambda i, s, u: [
            "tokenize",
            "--episodes",
            str(i / "eps4.hdf5"),
            "--tokenizer",
            str(s / "nope"),
            "--out",
            str(s / "c"),
        ],
        "image tokenizer not found",
    ),
    Case(
        "tokenize-unwritable-out",
        lambda i, s, u: [
            "tokenize",
            "--episodes",
            str(i / "eps4.hdf5"),
            "--tokenizer",
            str(i / "run" / "image_tokenizer"),
            "--out",
            str(u / "cache"),
        ],
        "not writable",
    ),
    # the main job and the ablations: refused before the first stage.
    Case(
        "quickstart-unwritable-out",
        lambda i, s, u: ["quickstart", "--preset", "debug", "--out", str(u / "qs")],
        "not writable",
    ),
    Case(
        "quickstart-negative-cap",
        lambda i, s, u: [
            "quickstart",
            "--preset",
            "debug",
            "--out",
            str(s / "qs"),
            "--max-minutes-per-stage",
            "-1",
        ],
        "must be a positive number",
    ),
    Case(
        "ablate-unwritable-out",
        lambda i, s, u: ["ablate", "--preset", "ablation-debug", "--out", str(u / "abl")],
        "not writable",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_and_changes_nothing(case, inputs, tmp_path, unwritable, capsys):
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    before = _snapshot(inputs, sandbox)
    code = cli(case.argv(inputs, sandbox, unwritable))
    err = capsys.readouterr().err
    assert code == case.code, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and case.phrase in lines[0], err
    assert "Traceback" not in err
    assert _snapshot(inputs, sandbox) == before  # nothing written, nothing lost


def test_an_unexpected_error_is_one_line_and_verbose_shows_the_traceback(tmp_path, capsys, monkeypatch):
    """An error no check anticipated (here: the disk fills while the report is written)."""
    import worldvla.eval.report as report

    (tmp_path / "stages.json").write_text(json.dumps({"stages": {}}))

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report, "atomic_write_text", disk_full)
    argv = ["report", str(tmp_path)]
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "OSError: [Errno 28] No space left on device (run with --verbose" in err
    assert cli([*argv, "--verbose"]) == 2
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.setenv("WORLDVLA_VERBOSE", "1")
    assert cli(argv) == 2
    assert "Traceback" in capsys.readouterr().err


# ---------------------------------------------------------------------------- budgets
def _synthetic_run(run: Path) -> None:
    """A debug-preset run directory whose collect and evaluation stages count as done, over
    synthetic 64×64 episodes: the quickstart then runs only the tokenizer, the token cache,
    training and the report — no simulator."""
    from worldvla.experiments import experiment_preset
    from worldvla.pipeline import RunState

    exp = experiment_preset("debug")
    suite = exp.suite
    run.mkdir()
    episodes = _episodes(4, size=suite.resolution, n=6, length=12)
    write_episodes(run / "data" / "episodes.hdf5", episodes)
    state = RunState(run, exp, json.loads(json.dumps(suite.to_dict())))
    for name in ("collect", "eval_policy", "eval_world"):
        state.stage(name)["done"] = True
    state.save()


@pytest.fixture()
def one_thread():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_a_capped_run_is_marked_cut_short_everywhere(tmp_path, capsys, one_thread):
    run = tmp_path / "qs"
    _synthetic_run(run)
    argv = ["quickstart", "--preset", "debug", "--out", str(run), "--no-progress"]
    # The cap was asked for: loud, but exit 0.
    assert cli([*argv, "--max-minutes-per-stage", "1e-6"]) == 0
    out = capsys.readouterr().out
    assert "WARNING: training stopped at step 1/6 (time cap) — results are not comparable" in out
    assert "WARNING: image tokenizer stopped at step 1/20 (time cap)" in out
    stages = json.loads((run / "stages.json").read_text())["stages"]
    assert (stages["tokenizer"]["step"], stages["tokenizer"]["total_steps"]) == (1, 20)
    assert (stages["train"]["step"], stages["train"]["total_steps"]) == (1, 6)
    assert stages["tokenizer"]["stopped"] == stages["train"]["stopped"] == "time cap"
    md = (run / "report.md").read_text()
    assert "| train | " in md and "stopped at 1/6 steps (time cap) |" in md
    assert "stopped at 1/20 steps (time cap)" in md
    assert md.rstrip().splitlines()[-1].startswith("**Not comparable with the README's results:**")
    assert "stopped at 1/6 steps (time cap)" in (run / "report.html").read_text()
    # Run again without the cap: the cut stages are kept as they are, and the exit says so.
    assert cli(argv) == 3
    captured = capsys.readouterr()
    assert "cut short by an earlier command" in captured.out and "exit status 3" in captured.err
    assert json.loads((run / "stages.json").read_text())["stages"]["train"]["step"] == 1


def test_the_debug_preset_runs_its_full_step_budget(tmp_path, capsys, one_thread):
    run = tmp_path / "qs"
    _synthetic_run(run)
    assert cli(["quickstart", "--preset", "debug", "--out", str(run), "--no-progress"]) == 0
    assert "WARNING" not in capsys.readouterr().out
    doc = json.loads((run / "stages.json").read_text())
    # The experiment's parts by name, as before they were objects (tests/test_experiments.py
    # pins the whole record).
    from worldvla.experiments import experiment_preset

    recorded = doc["experiment"]
    assert (recorded["suite"], recorded["tokenizer"], recorded["train"]) == (
        "debug",
        "mw64",
        "mw-quick-debug",
    )
    assert list(recorded) == list(experiment_preset("debug").to_dict()) and recorded["train_overrides"] == []
    stages = doc["stages"]
    assert stages["tokenizer"]["step"] == stages["tokenizer"]["total_steps"] == 20
    assert stages["train"]["step"] == stages["train"]["total_steps"] == 6
    assert stages["tokenizer"]["stopped"] is None and stages["train"]["stopped"] is None
    tok = json.loads((run / "tokenizer" / "metrics.json").read_text())
    assert tok["steps"] == 20 and tok["train_config"]["minutes"] is None
    md = (run / "report.md").read_text()
    assert "done, 6/6 steps" in md and "done, 20/20 steps" in md
    assert md.rstrip().splitlines()[-1] == "Every stage ran its full step budget."


# ---------------------------------------------------------------------------- stored runs
def _legacy_run(run: Path, **experiment) -> dict:
    """stages.json of a debug run as versions that budgeted in minutes wrote it."""
    from worldvla.envs.suites import suite_preset
    from worldvla.experiments import experiment_preset

    exp = json.loads(json.dumps(experiment_preset("debug").to_dict()))
    exp.update(experiment)
    doc = {
        "preset": "debug",
        "experiment": exp,
        "seed": 0,
        "suite": json.loads(json.dumps(suite_preset("debug").to_dict())),
        "stages": {
            "collect": {"done": True, "seconds": 60.0},
            "tokenizer": {"done": True, "seconds": 300.0, "val_psnr": 25.0},
            "tokenize": {"done": True, "seconds": 30.0},
            "train": {"done": True, "seconds": 840.0, "step": 1233, "stopped_by_budget": True},
        },
    }
    run.mkdir()
    (run / "stages.json").write_text(json.dumps(doc, indent=2) + "\n")
    return doc


def test_runs_stored_with_minute_budgets_are_still_reused_and_reported(tmp_path):
    from worldvla.errors import ConfigError
    from worldvla.eval.report import write_report
    from worldvla.experiments import experiment_preset
    from worldvla.pipeline import DATA_STAGES, RunState, run_pipeline, stopped_stages

    exp = experiment_preset("debug")
    # A step-budgeted tokenizer (tokenizer_steps ruled over tokenizer_minutes): the same recipe.
    steps_ruled = tmp_path / "steps"
    _legacy_run(steps_ruled, tokenizer_minutes=0.2, tokenizer_steps=20, train_minutes=None)
    state = RunState(steps_ruled, exp)
    assert "time_budget_minutes" not in state.doc["stages"]["tokenizer"]
    # A time-budgeted tokenizer and a capped training: reused as they are (the ablation reads
    # such data stages without rewriting anything) and reported for what they were.
    timed = tmp_path / "timed"
    _legacy_run(timed, tokenizer_minutes=5.0, tokenizer_steps=None, train_minutes=14.0)
    before = (timed / "stages.json").read_bytes()
    run_pipeline(exp, timed, progress=False, log=lambda _: None, stages=DATA_STAGES)
    assert (timed / "stages.json").read_bytes() == before
    assert RunState(timed, exp).doc["stages"]["tokenizer"]["time_budget_minutes"] == 5.0
    (timed / "tokenizer").mkdir()
    (timed / "tokenizer" / "metrics.json").write_text(json.dumps({"steps": 411, "val_psnr": 25.0}))
    ckpt = timed / "train" / "checkpoints" / "step_00001233"
    ckpt.mkdir(parents=True)
    (ckpt / "config.json").write_text(json.dumps({"train": {"steps": 1500}}))
    (timed / "train" / "checkpoints" / "latest").write_text("step_00001233\n")
    assert stopped_stages(timed) == {"train": "stopped at 1,233/1,500 steps (time cap)"}
    write_report(timed)
    md = (timed / "report.md").read_text()
    assert "| tokenizer | 5.0 | 411 steps in a 5-min time budget (made before budgets were steps) |" in md
    assert "| train | 14.0 | stopped at 1,233/1,500 steps (time cap) |" in md
    assert "Not comparable with the README's results" in md
    # Another recipe is still refused, legacy fields or not.
    other = tmp_path / "other"
    _legacy_run(other, tokenizer_minutes=5.0, tokenizer_steps=None, train_minutes=14.0, train="mw-quick")
    with pytest.raises(ConfigError, match="another configuration"):
        RunState(other, exp)
