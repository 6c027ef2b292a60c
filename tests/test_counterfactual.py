"""Counterfactual world-model evaluation on a toy simulator: a model that follows its actions
scores a positive action fidelity and matches the simulator for every action sequence; a
model that ignores them scores exactly zero."""

import numpy as np
import pytest

from worldvla.envs.base import Observation
from worldvla.errors import DataError
from worldvla.eval.counterfactual import (
    KINDS,
    EpisodeOutcomes,
    StartState,
    counterfactual_actions,
    format_table,
    masked_psnr,
    moving_mask,
    row,
    run_counterfactual,
    score_outcomes,
)

SIZE = 16


def _frame(pos: np.ndarray) -> np.ndarray:
    img = np.full((SIZE, SIZE, 3), 40, np.uint8)
    y, x = np.clip(np.round(pos).astype(int), 1, SIZE - 2)
    img[y - 1 : y + 2, x - 1 : x + 2] = 230  # a 3x3 "arm"
    return img


class DotEnv:
    """A dot moved by actions[:2] pixels per step; the variation sets its start."""

    camera = "cam"

    def reset(self, task: str, variation: int) -> Observation:
        self.pos = np.array([4.0 + variation % 8, 5.0 + variation % 6])
        return Observation(images={"cam": _frame(self.pos)}, instruction=task)

    def step(self, action: np.ndarray) -> tuple[Observation, bool]:
        self.pos = np.clip(self.pos + np.asarray(action[:2], float), 1, SIZE - 2)
        return Observation(images={"cam": _frame(self.pos)}, instruction=""), False

    def close(self) -> None:
        pass


class DotModel:
    """Oracle (``follow=True``): the same dynamics from the dot found in the first frame;
    blind: always the demonstration's usual motion (+1, +1 per step), whatever it is told."""

    def __init__(self, follow: bool) -> None:
        self.follow = follow

    def encode(self, frames: np.ndarray) -> np.ndarray:  # a lossy "tokenizer": 4 levels
        return frames // 64

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return (codes * 64 + 32).astype(np.uint8)

    def rollout(self, first: np.ndarray, actions: np.ndarray) -> np.ndarray:
        out = np.zeros((*actions.shape[:2], SIZE, SIZE, 3), np.uint8)
        for n in range(len(first)):
            ys, xs = np.nonzero(first[n, :, :, 0] > 128)
            pos = np.array([ys.mean(), xs.mean()])
            for t in range(actions.shape[1]):
                move = actions[n, t, :2] if self.follow else np.ones(2)
                pos = np.clip(pos + move, 1, SIZE - 2)
                out[n, t] = _frame(pos)
        return out


def _starts(n: int = 4) -> list[StartState]:
    env = DotEnv()
    starts = []
    for i in range(n):
        first = env.reset(f"task-{i % 2}", i).images["cam"]
        acts = np.tile(np.array([[1.0, 1.0, 0, 0]], np.float32), (6 + i, 1))
        starts.append(StartState(f"demo_{i}", f"task-{i % 2}", i, first, acts))
    return starts


def test_a_model_that_follows_its_actions_scores_positive_fidelity_and_a_blind_one_zero():
    starts = _starts()
    follow = score_outcomes(run_counterfactual(DotModel(True), DotEnv(), starts, max_length=20))
    blind = score_outcomes(run_counterfactual(DotModel(False), DotEnv(), starts, max_length=20))
    for length in ("1", "10", "end"):
        assert follow["fidelity"][length]["db"] > 10
        assert blind["fidelity"][length]["db"] == pytest.approx(0.0, abs=1e-9)
    # The oracle matches the simulator for every sequence; the blind model only for the
    # demonstration (whose motion it always draws), and its zero-action rollout is as bad
    # as the action-blind baseline.
    for kind in KINDS:
        assert row(follow, kind, "worldvla", 10)["psnr_moving"] == pytest.approx(100.0)
    assert row(blind, "demonstration", "worldvla", 10)["psnr_moving"] == pytest.approx(100.0)
    zero = row(blind, "zero", "worldvla", 10)
    assert (
        zero["psnr_moving"] < 20
        and zero["psnr_moving"] == row(blind, "zero", "action-blind", 10)["psnr_moving"]
    )
    assert (
        row(follow, "zero", "worldvla", 10)["psnr_moving"]
        > row(follow, "zero", "action-blind", 10)["psnr_moving"]
    )
    table = format_table(follow)
    assert "| zero |" in table and "action fidelity" in table
    # The targets: the oracle imagines every sequence as well as the true one and far better
    # than the blind model; the blind model gains nothing over itself.
    target_line = next(line for line in table.splitlines() if line.startswith("at 10 frames"))
    assert follow["targets"]["met"] and target_line.endswith(": met")
    assert follow["targets"]["gap_to_true_db"] == pytest.approx(0.0, abs=1e-9)
    assert follow["targets"]["gain_over_blind_db"] > 3
    assert not blind["targets"]["met"] and "not met" in format_table(blind)
    # The tokenizer row is the simulator's frames through the (lossy) tokenizer, for every
    # model alike; the ceiling of the gain is what a model drawing each outcome that well
    # would gain over the demonstration's outcome: far above the target for a moving dot.
    for kind in KINDS:
        tok = row(follow, kind, "tokenizer", 10)["psnr_moving"]
        assert 20 < tok < 100 and tok == row(blind, kind, "tokenizer", 10)["psnr_moving"]
    assert follow["targets"]["ceiling_gain_db"] == blind["targets"]["ceiling_gain_db"] > 3
    assert table.splitlines()[2].endswith("| repeat-last | tokenizer |")
    assert follow["targets"]["ceiling_gap_db"] == pytest.approx(
        row(follow, "demonstration", "tokenizer", 10)["psnr_moving"]
        - np.mean(
            [
                row(follow, k, "tokenizer", 10)["psnr_moving"]
                for k in ("zero", "negated", "other-task", "random")
            ]
        )
    )
    assert "as well as the image tokenizer can: gap" in table
    plain = score_outcomes(run_counterfactual(DotModel(True), DotEnv(), starts, max_length=20, ceiling=False))
    assert "tokenizer" not in format_table(plain) and "ceiling_gain_db" not in str(plain["fidelity"])
    for name in ("ceiling_gain_db", "ceiling_gap_db"):  # NaN: not measured
        assert plain["targets"][name] != plain["targets"][name]
    assert blind["targets"]["gain_over_blind_db"] == pytest.approx(0.0, abs=1e-9)
    assert blind["targets"]["gap_to_true_db"] > 1


def test_counterfactual_sequences_are_seeded_and_shaped_like_the_demonstration():
    starts = _starts()
    a, b = counterfactual_actions(starts, 5, seed=1), counterfactual_actions(starts, 5, seed=1)
    assert set(a) == set(KINDS)
    for kind in KINDS:
        for x, y, s in zip(a[kind], b[kind], starts, strict=True):
            np.testing.assert_array_equal(x, y)
            assert x.shape == (min(5, len(s.actions)), 4) and np.abs(x).max() <= 1.0
    np.testing.assert_array_equal(a["negated"][0], -a["demonstration"][0])
    assert not a["zero"][0].any()
    # Another task's actions: start 0 (task-0) takes those of a task-1 demonstration.
    assert starts[1].task != starts[0].task


def test_moving_mask_is_the_union_over_outcomes_and_masked_psnr_ignores_the_rest():
    first = np.zeros((8, 8, 3), np.uint8)
    a = np.zeros((2, 8, 8, 3), np.uint8)
    b = np.zeros((3, 8, 8, 3), np.uint8)
    a[0, 0, 0] = 200
    b[2, 7, 7] = 200
    mask = moving_mask(first, [a, b])
    assert mask.shape == (3, 8, 8) and mask[0, 0, 0] and mask[2, 7, 7] and mask.sum() == 2
    pred = np.zeros((3, 8, 8, 3), np.uint8)
    pred[:, 3, 3] = 255  # an error outside the mask does not count
    psnr = masked_psnr(pred, b, mask)
    assert psnr[0] == 100.0 and np.isnan(psnr[1]) and psnr[2] < 10


def test_a_simulator_that_renders_otherwise_is_refused():
    starts = _starts(2)
    bad = [StartState(s.key, s.task, s.variation, 255 - s.first_frame, s.actions) for s in starts]
    with pytest.raises(DataError, match="renders differently"):
        run_counterfactual(DotModel(True), DotEnv(), bad, max_length=5)


def test_outcomes_of_unequal_length_are_scored_to_their_own_end():
    starts = _starts(2)
    outs = run_counterfactual(DotModel(True), DotEnv(), starts, max_length=7)
    assert [o.length for o in outs] == [6, 7]
    assert isinstance(outs[0], EpisodeOutcomes) and outs[0].pred["random"].shape == (6, SIZE, SIZE, 3)


# ---------------------------------------------------------------------------- probe-world
def test_a_probe_shows_whether_the_imagined_dot_does_what_it_is_told():
    from worldvla.eval.metrics.image import PSNR_CAP_DB
    from worldvla.eval.probe import parse_sequence, probe_markdown, run_probe

    start = _starts(1)[0]  # the demonstration moves the dot (+1, +1) per step for 6 steps
    seqs = [parse_sequence(s, start.actions, steps=5) for s in ("zero", "hold:0,-1,0,0", "negated")]
    assert [len(s.actions) for s in seqs] == [5, 5, 5]
    follow = run_probe(DotModel(follow=True), DotEnv(), start, seqs)
    rows = {r["sequence"]: r for r in follow["rows"]}
    assert list(rows) == ["demonstration", "zero", "hold 0,-1,0,0", "negated"]
    assert rows["zero"]["change_simulator"] == 0.0 == rows["zero"]["change_imagined"]  # stays still
    for r in rows.values():  # the oracle draws exactly what the simulator renders
        assert r["psnr_moving_first"] == r["psnr_moving_last"] == PSNR_CAP_DB
        assert r["change_imagined"] == pytest.approx(r["change_simulator"])
    assert rows["hold 0,-1,0,0"]["action_blind_last"] < 20  # the demonstration went elsewhere
    blind = {r["sequence"]: r for r in run_probe(DotModel(follow=False), DotEnv(), start, seqs)["rows"]}
    assert (
        blind["zero"]["change_imagined"] > 50 and blind["zero"]["change_simulator"] == 0.0
    )  # it moves anyway
    for k in ("zero", "hold 0,-1,0,0", "negated"):  # a blind model is its own action-blind reference
        assert blind[k]["psnr_moving_last"] == pytest.approx(blind[k]["action_blind_last"])
    doc = {
        "checkpoint": "ckpt",
        "episode": start.key,
        "task": start.task,
        "guidance": 1.0,
        "rows": follow["rows"],
    }
    assert "| zero | 5 |" in probe_markdown(doc)


def test_probe_sequences_from_names_holds_and_files_and_what_is_refused(tmp_path):
    from worldvla.errors import ConfigError
    from worldvla.eval.probe import MAX_FILE_BYTES, parse_sequence

    demo = np.tile(np.array([[0.5, -0.5, 0.0, 1.0]], np.float32), (8, 1))
    assert np.array_equal(parse_sequence("negated", demo, 3).actions, -demo[:3])
    r1, r2 = parse_sequence("random", demo, 20, seed=1), parse_sequence("random", demo, 20, seed=1)
    assert r1.actions.shape == (8, 4) and np.array_equal(r1.actions, r2.actions)  # capped, seeded
    held = parse_sequence("hold:0,0,1,-1", demo, 4)
    assert held.label == "hold 0,0,1,-1" and np.array_equal(held.actions, np.tile([[0, 0, 1, -1]], (4, 1)))
    np.save(tmp_path / "up.npy", np.tile(np.array([[0, 0, 0.5, 0]], np.float32), (6, 1)))
    assert parse_sequence(str(tmp_path / "up.npy"), demo, 4).actions.shape == (4, 4)
    (tmp_path / "left.csv").write_text("-1,0,0,0\n-1,0,0,0\n")
    assert parse_sequence(str(tmp_path / "left.csv"), demo, 4).actions.tolist() == [[-1, 0, 0, 0]] * 2
    (tmp_path / "wide.csv").write_text("0,0,0\n")
    (tmp_path / "big.csv").write_text("2,0,0,0\n")
    (tmp_path / "nan.csv").write_text("nan,0,0,0\n")
    (tmp_path / "words.csv").write_text("up,down\n")
    (tmp_path / "huge.npy").write_bytes(b"\0" * (MAX_FILE_BYTES + 1))
    (tmp_path / "a.json").write_text("[]")
    for spec, needle in (
        ("sideways", "unknown action sequence 'sideways'"),
        ("hold:1,x", "expected hold:a,b,... with 4 numbers"),
        ("hold:1,0", r"must be \(T, 4\)"),
        (str(tmp_path / "wide.csv"), r"wide.csv: actions must be \(T, 4\)"),
        (str(tmp_path / "big.csv"), r"big.csv: actions must lie in \[-1, 1\]"),
        (str(tmp_path / "nan.csv"), "nan.csv: actions must be finite"),
        (str(tmp_path / "words.csv"), "words.csv: not a readable action file"),
        (str(tmp_path / "huge.npy"), "more than the"),
        (str(tmp_path / "missing.npy"), "missing.npy: action file not found"),
        (str(tmp_path / "a.json"), "unknown action sequence"),
    ):
        with pytest.raises((ConfigError, DataError), match=needle):
            parse_sequence(spec, demo, 4)


def test_a_probe_can_start_inside_the_episode_and_checks_that_the_simulator_gets_there():
    from dataclasses import replace

    from worldvla.eval.probe import parse_sequence, run_probe

    s = _starts(1)[0]
    env = DotEnv()
    env.reset(s.task, s.variation)
    for a in s.actions[:3]:
        obs, _ = env.step(a)
    mid = replace(s, first_frame=obs.images["cam"], actions=s.actions[3:], prefix=s.actions[:3])
    rows_zero = [parse_sequence("zero", mid.actions, 3)]
    rows = run_probe(DotModel(follow=True), DotEnv(), mid, rows_zero)["rows"]
    assert [r["steps"] for r in rows] == [3, 3] and rows[1]["change_simulator"] == 0.0
    assert rows[1]["change_imagined"] == 0.0  # from a settled state, zero actions keep the dot still
    with pytest.raises(DataError, match="frame at step 3 differs"):
        run_probe(DotModel(follow=True), DotEnv(), replace(mid, first_frame=s.first_frame), rows_zero)
