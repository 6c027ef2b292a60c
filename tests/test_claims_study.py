"""The claims study: its plan (exposure, deduplication, pre-training order), its report, one run."""

from __future__ import annotations

import json
import math

import pytest

from worldvla.ablation.config import STUDY_LEVELS, STUDY_VARIANTS, ablation_preset, resolve
from worldvla.ablation.runner import plan
from worldvla.ablation.study_report import CLAIM1_METRICS, CLAIM2_METRICS, comparisons, paired, verdict
from worldvla.commands.ablate import main as ablate_main
from worldvla.errors import ConfigError
from worldvla.train.config import config_diff, train_preset


def test_each_level_moves_one_factor_and_joint_runs_match_exposure():
    cfg = ablation_preset("claims-study")
    base = resolve(cfg, "base/joint", 0)
    assert base.world_data == "demos" and base.early_stop_patience > 0 and base.model == "mini"
    for level, (_, _, changes) in STUDY_LEVELS.items():
        joint = resolve(cfg, f"{level}/joint", 0)
        assert set(config_diff(base, joint)) - {"name"} == set(changes), level
        single = resolve(cfg, f"{level}/action-only", 0)
        # As many samples of each kind: 2x the steps at world_fraction 0.5, validated after
        # as many samples of the compared kind.
        assert joint.steps == 2 * single.steps and joint.val_every == 2 * single.val_every
        assert joint.effective_world_fraction == 0.5
        assert not single.use_world_data and not resolve(cfg, f"{level}/world-only", 0).use_action_data


def test_the_plan_trains_shared_runs_once_and_pretraining_first():
    cfg = ablation_preset("claims-study")
    runs = plan(cfg)
    by_name = {(n, r.seed): r for r in runs for n in r.variants}
    # An action model reads no world data: base's and explore's are one run.
    assert by_name[("base/action-only", 0)] is by_name[("explore/action-only", 0)]
    # Every variant on every seed but the small model's (one seed within the budget).
    assert cfg.seeds_of("small/joint") == (0,) and cfg.seeds_of("compact/joint") == cfg.seeds
    assert len(runs) == (len(STUDY_VARIANTS) - 1) * len(cfg.seeds) - 3 * 2
    assert {r.seed for r in runs if r.variants[0].startswith("small/")} == {0}
    # Asked for other seeds, every level runs on them.
    assert {r.seed for r in plan(cfg.select(["small/joint"], [1, 2]))} == {1, 2}
    ft = by_name[("pretrain/action-ft", 1)]
    pre = by_name[("base/world-only", 1)]
    assert ft.init == pre.key and runs.index(pre) < runs.index(ft)
    assert ft.key != by_name[("base/action-only", 1)].key  # same config, other initial weights
    # Asking for the fine-tuned run alone brings the run it starts from.
    only = plan(cfg.select(["pretrain/action-ft"], [0]))
    assert [r.variants for r in only] == [("base/world-only",), ("pretrain/action-ft",)]


def test_paired_differences_and_verdicts():
    cfg = ablation_preset("claims-study")
    (cmp,) = [c for c in comparisons(cfg) if c.claim == 1 and c.level == "demos-10"]
    l1 = CLAIM1_METRICS[0]

    def res(values):
        return [{"seed": s, "offline": {"l1": v}} for s, v in enumerate(values)]

    # The joint model's L1 is lower on every seed by ~0.05: the claim holds.
    out = {cmp.baseline: res([0.40, 0.50, 0.45]), cmp.joint: res([0.35, 0.44, 0.41])}
    p = paired(cmp, out, l1)
    assert p["seeds"] == [0, 1, 2]
    assert all(math.isclose(a, b) for a, b in zip(p["diff"], [-5.0, -6.0, -4.0], strict=True))
    assert math.isclose(p["diff_mean"], -5.0) and verdict(p, l1.better) == "holds"
    out[cmp.joint] = res([0.45, 0.56, 0.49])
    assert verdict(paired(cmp, out, l1), l1.better) == "reversed"
    out[cmp.joint] = res([0.35, 0.56, 0.45])
    assert verdict(paired(cmp, out, l1), l1.better) == "not decided"
    out[cmp.joint] = res([0.35])  # one paired seed: no interval
    assert verdict(paired(cmp, out, l1), l1.better).startswith("—")


def test_world_metrics_are_read_in_the_units_stored():
    row = {"method": "worldvla", "requested_length": 10, "psnr": 24.5, "ssim": 87.9}  # SSIM ×100
    res = {"world": [row, {**row, "requested_length": 50, "psnr": 23.0}]}
    got = {m.label: m.read(res) for m in CLAIM2_METRICS}
    assert got["PSNR@10 dB"] == 24.5 and got["PSNR@end dB"] == 23.0 and got["SSIM@10 ×100"] == 87.9


def test_debug_study_runs_the_pretraining_comparison_end_to_end(tmp_path, capsys):
    out, kept = tmp_path / "study", tmp_path / "results"
    args = ["--preset", "claims-study-debug", "--no-progress", "--seeds", "0,1"]
    args += ["--only", "base/action-only,pretrain/action-ft", "--results", str(kept)]
    # Two worker processes share the runs; the fine-tuning runs wait for their world models.
    assert ablate_main([*args, "--out", str(out), "--jobs", "2"]) == 0
    results = [json.loads(p.read_text()) for p in out.glob("runs/*/result.json")]
    assert len(results) == 6  # 3 runs x 2 seeds, world-only brought in
    runs = {r["variants"][0]: r for r in results if r["seed"] == 0}
    pre, ft = runs["base/world-only"], runs["pretrain/action-ft"]
    assert ft["init_run"] == pre["key"]
    assert ft["train"]["init_from"].endswith(f"runs/{pre['key']}/train/best/world")
    for r in runs.values():
        t = r["train"]
        assert set(r["best"]) == {
            k for k, on in (("action", t["use_action_data"]), ("world", t["use_world_data"])) if on
        }
        assert r["steps_cap"] == r["train"]["steps"]
    assert "counterfactual" in pre and "fidelity" in pre["counterfactual"]
    builds = {(r["data"]["collection"], r["data"]["tokenizer"]) for r in results}
    assert len(builds) == 1 and all(len(x) >= 16 for x in next(iter(builds)))  # one build, recorded
    table = (out / "table.md").read_text()
    assert "(4 runs)." in table and "straddle" not in table  # the selected variants
    assert "| `pretrain` (world-model pre-training, then action fine-tuning) | pre-training |" in table
    assert (out / "claims_vs_factor.png").stat().st_size > 1000
    doc = json.loads((kept / "runs.json").read_text())
    (cmp,) = doc["comparisons"]
    assert cmp["with"] == "pretrain/action-ft" and len(cmp["metrics"]["action L1 ×100"]["diff"]) == 2
    # The world models the fine-tuning runs start from are recorded too, though not selected.
    assert {r["variants"][0] for r in doc["init_runs"]} == {"base/world-only"}
    # The same command again trains nothing.
    capsys.readouterr()
    assert ablate_main([*args, "--out", str(out)]) == 0
    assert "6 distinct runs (6 done earlier)" in capsys.readouterr().out

    # The results directory is what a repository keeps: on a machine without the run
    # directory, the runs it records are restored, not run again, and the tables are the same.
    def body(text: str) -> list[str]:  # the provenance line names the command that wrote it
        return [line for line in text.splitlines() if "commit `" not in line]

    elsewhere = tmp_path / "elsewhere"
    assert ablate_main([*args, "--out", str(elsewhere), "--data", str(out / "data")]) == 0
    printed = capsys.readouterr().out
    assert "[restore] 6 finished run(s)" in printed and "6 distinct runs (6 done earlier)" in printed
    assert not list(elsewhere.glob("runs/*/train"))  # nothing trained
    assert body((kept / "table.md").read_text()) == body(table)

    # A fine-tuning run that is not recorded needs its world model's weights: that one runs
    # again (with the fine-tuning run), the others are restored.
    ft1 = next(r for r in doc["variants"]["pretrain/action-ft"]["runs"] if r["seed"] == 1)
    doc["variants"]["pretrain/action-ft"]["runs"].remove(ft1)
    (kept / "runs.json").write_text(json.dumps(doc))
    third = tmp_path / "third"
    assert ablate_main([*args, "--out", str(third), "--data", str(out / "data")]) == 0
    assert "[restore] 4 finished run(s)" in capsys.readouterr().out
    trained = {json.loads((p.parent / "result.json").read_text())["key"] for p in third.glob("runs/*/train")}
    assert trained == {ft1["key"], ft1["init_run"]}

    # Results of another budget are refused, naming the file.
    doc["provenance"]["budget"]["steps"] += 1
    (kept / "runs.json").write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="runs.json records runs of another budget"):
        ablate_main([*args, "--out", str(tmp_path / "fourth"), "--data", str(out / "data")])


def test_study_base_is_the_multistep_quickstart_recipe():
    cfg = ablation_preset("claims-study")
    assert cfg.experiment == "mw-quick-multistep" and cfg.train == "mw-quick-multistep"
    # The base joint model is that quickstart's recipe and length (1,500 steps), with world
    # data from the demonstrations and early stopping.
    diff = config_diff(train_preset("mw-quick-multistep"), resolve(cfg, "base/joint", 0))
    assert set(diff) == {
        "name",
        "world_data",
        "early_stop_patience",
        "val_every",
        "val_batches",
        "ckpt_every",
    }


def test_the_report_names_the_data_builds_and_the_pairs_that_straddle_two():
    from worldvla.ablation.study_report import data_note

    cfg = ablation_preset("claims-study")
    a, b = {"collection": "c" * 64, "tokenizer": "1" * 16}, {"collection": "c" * 64, "tokenizer": "2" * 16}
    res = {
        "base/action-only": [{"key": "k0", "seed": 0}, {"key": "k1", "seed": 1, "data": b}],
        "base/joint": [{"key": "j0", "seed": 0}, {"key": "j1", "seed": 1, "data": b}],
        "base/world-only": [{"key": "w0", "seed": 0, "data": a}, {"key": "w1", "seed": 1, "data": b}],
    }
    note = data_note(cfg, res)
    assert "`cccccccc/11111111` (1 run), `cccccccc/22222222` (3 runs)" in note
    assert "no record (2 runs, finished before runs recorded it)" in note
    # claim 2 seed 0: world-only on build a, joint without a record; seed 1 shares build b.
    assert "base claim 2 seed 0" in note and "base claim 2 seed 1" not in note
    assert "base claim 1" not in note  # both unrecorded (seed 0) or on one build (seed 1)
    same = {v: [r for r in rs if r["seed"] == 1] for v, rs in res.items()}
    assert "straddle" not in data_note(cfg, same)
    unrecorded = {v: [{k: x for k, x in r.items() if k != "data"} for r in rs] for v, rs in res.items()}
    assert "straddle" not in data_note(cfg, unrecorded)  # two unrecorded runs cannot be told apart
