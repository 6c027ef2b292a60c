"""The ablation driver: variants, deduplication, budgets, resumption, and the tables it writes."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest

from worldvla.ablation.aggregate import aggregate, collect_results
from worldvla.ablation.config import STUDY_VARIANTS, VARIANTS, ablation_preset, resolve, run_key
from worldvla.ablation.runner import plan, run_ablation
from worldvla.commands.ablate import main as ablate_main
from worldvla.errors import ConfigError
from worldvla.train.config import VARIANTS as TRAIN_VARIANTS
from worldvla.train.config import config_diff, preset_inference, train_preset


def test_each_variant_changes_only_its_fields_and_the_budget():
    cfg = ablation_preset("mw-ablation")
    base = train_preset(cfg.train)
    budget = {"name", "steps", "warmup_steps", "seed"}
    for v in (VARIANTS.get(n) for n in VARIANTS if n not in STUDY_VARIANTS):  # the study: its own tests
        t = resolve(cfg, v.name, 7)
        assert t.steps == cfg.steps * v.step_scale and t.seed == 7
        changed = set(config_diff(base, t)) - budget
        expected = set(dict(v.changes))
        # K=1 runs always carry the (then irrelevant) chunk mask.
        assert changed == expected - ({"chunk_mask"} if t.chunk_len == 1 else set()), v.name


# The run keys of mw-ablation's seed 0: a run directory is found again by its key, so a
# change to how variants or presets are defined must leave them as they are.
SEED0_KEYS = {
    "action-only-k1": "8071aadc5c",
    "joint-k1": "8aa48eff17",
    "action-only-k5-causal": "69424669b7",
    "action-only-k5-mask": "d85ceceabb",
    "full": "75b9152450",
    "history-2": "f7f61bde1a",
    "history-4": "74711d33c3",
    "k1-causal": "8aa48eff17",
    "k5-causal": "e53a48cb4c",
    "k10-mask": "de2ffa4829",
    "k10-causal": "1fab191632",
    "k20-mask": "a743d0e218",
    "k20-causal": "d2278107a6",
    "world-only": "97cbaa50d3",
    "joint-k1-matched": "015bf72304",
    "full-matched": "1392a700da",
}


def test_run_keys_stay_put():
    cfg = ablation_preset("mw-ablation")
    assert {n: run_key(resolve(cfg, n, 0)) for n in SEED0_KEYS} == SEED0_KEYS
    assert set(SEED0_KEYS) == set(VARIANTS) - set(STUDY_VARIANTS)


def test_variants_are_built_from_the_training_presets_changes():
    """The changes a variant shares with a ``mw-quick-<name>`` training preset are that preset's."""
    assert dict(VARIANTS.get("k5-causal").changes) == TRAIN_VARIANTS["no-chunk-mask"]
    assert dict(VARIANTS.get("world-only").changes) == TRAIN_VARIANTS["world-only"]
    assert dict(VARIANTS.get("action-only-k1").changes) == {
        **TRAIN_VARIANTS["action-only"],
        **TRAIN_VARIANTS["no-chunk"],
    }


def test_the_readout_is_the_ablations_and_no_part_of_a_runs_key():
    """Every run's checkpoints read actions out greedily (as the committed results were
    evaluated), whatever the base preset's checkpoints carry; the readout shapes no weights."""
    cfg = ablation_preset("mw-ablation")
    assert cfg.inference.action_readout == "argmax" != preset_inference(cfg.train).action_readout
    mean = replace(cfg, action_readout="mean")
    assert [r.key for r in plan(mean)] == [r.key for r in plan(cfg)]
    with pytest.raises(ConfigError, match="action_readout"):
        replace(cfg, action_readout="mode")


def test_run_keys_of_existing_ablation_runs_are_kept():
    """A run directory is found by its key: the keys of runs trained before must not move (the
    readout left the training config; it was never part of a key)."""
    keys = {
        ("mw-ablation", "full", 0): "75b9152450",
        ("mw-ablation", "world-only", 0): "97cbaa50d3",
        ("mw-ablation", "action-only-k1", 1): "3965581575",
        ("mw-ablation-claims", "full-matched", 2): "e3dafeb126",
    }
    for (preset, name, seed), key in keys.items():
        assert run_key(resolve(ablation_preset(preset), name, seed)) == key, (preset, name, seed)


def test_identical_configs_train_once_and_report_under_every_name():
    cfg = ablation_preset("mw-ablation")
    runs = plan(cfg)
    assert len(runs) == 13 * len(cfg.seeds)  # 14 variants, K=1 with/without mask coincide
    claims = plan(ablation_preset("mw-ablation-claims"))
    matched = [r for r in claims if "full-matched" in r.variants]
    assert len(matched) == 3 and all(r.train.steps == 1200 for r in matched)
    by_name = {(n, r.seed): r for r in runs for n in r.variants}
    assert by_name[("joint-k1", 0)] is by_name[("k1-causal", 0)]
    assert by_name[("full", 1)].key != by_name[("k5-causal", 1)].key
    assert by_name[("full", 0)].key != by_name[("full", 1)].key  # seeds differ
    assert by_name[("full", 0)].world_eval and not by_name[("world-only", 0)].policy_eval
    # Keys ignore the run's name: the quick preset's runs are the full preset's runs.
    quick = ablation_preset("mw-ablation-quick")
    assert {r.key for r in plan(quick)} <= {r.key for r in runs}


def test_presets_validate():
    with pytest.raises(ConfigError, match="unknown variants"):
        replace(ablation_preset("mw-ablation"), variants=("full", "fulll"))
    with pytest.raises(ConfigError, match="seeds"):
        replace(ablation_preset("mw-ablation"), seeds=(0, 0))


def _fake_result(run_dir, cfg, name, seed, success, psnr=None):
    key = run_key(resolve(cfg, name, seed))
    doc = {
        "key": key,
        "variants": [name],
        "seed": seed,
        "policy": {"success": success},
        "offline": {
            "l1": success / 2,
            "l1_first": success / 4,
            "l1_per_position": [success / 4, success / 2],
            "baseline_mean_action_l1": 0.5,
        },
    }
    if psnr is not None:
        doc["world"] = [
            {"method": m, "requested_length": n, "length": n, "videos": 4, "psnr": psnr + d, "ssim": 50.0}
            for m, d in (("worldvla", 0.0), ("repeat-last", -3.0))
            for n in cfg.rollout_lengths
        ]
    (run_dir / "runs" / key).mkdir(parents=True)
    (run_dir / "runs" / key / "result.json").write_text(json.dumps(doc))


def test_aggregate_means_and_t_intervals_over_seeds(tmp_path):
    cfg = ablation_preset("mw-ablation")
    for seed, s in zip(cfg.seeds, (0.2, 0.4, 0.6), strict=True):
        _fake_result(tmp_path, cfg, "joint-k1", seed, s)
        _fake_result(tmp_path, cfg, "full", seed, s / 2, psnr=20.0 + seed)
    _fake_result(tmp_path, cfg, "action-only-k1", 0, 0.1)  # one seed of three finished
    _fake_result(tmp_path, cfg, "k5-causal", 0, 0.4)
    assert len(collect_results(tmp_path, cfg)["k1-causal"]) == 3  # the deduplicated twin
    table = aggregate(tmp_path, cfg).read_text()
    half = 4.303 * 20 / math.sqrt(3)  # t(2) * sd / sqrt(n)
    assert (
        f"| joint-k1 | ✓ | 1 | — | 1 | 200 | 40.0 ± {half:.1f} | 20, 40, 60 | 20.0 ± {half / 2:.1f} |"
        in table
    )
    assert "| action-only-k1 |  | 1 | — | 1 | 200 | 10.0 | 10 | 5.0 | 2.5 | 1 of 3 |" in table
    assert "| 1 | 40.0 ± 49.7 | 40.0 ± 49.7 | 20.0 ± 24.8 | 20.0 ± 24.8 |" in table  # K=1 is one run
    assert "| 10 | — | — | — | — |" not in table  # rows without any run are left out
    assert "predicting the mean held-out action scores 50.0–50.0" in table
    assert "| k5-causal | 10.0 | 20.0 |" in table and "| full | 5.0 | 10.0 |" in table  # L1 by position
    assert "| full (200 steps) | 21.00 ± 2.48 | 50.0 ± 0.0 |" in table  # PSNR@10 over seeds 20, 21, 22
    assert (tmp_path / "success_vs_chunk.png").stat().st_size > 1000
    raw = json.loads((tmp_path / "runs.json").read_text())
    assert [r["seed"] for r in raw["variants"]["joint-k1"]["runs"]] == [0, 1, 2]
    assert raw["variants"]["history-4"]["runs"] == []


def test_another_budget_in_the_same_directory_is_refused(tmp_path):
    cfg = ablation_preset("ablation-debug")
    (tmp_path / "ablation.json").write_text(json.dumps({"budget": {"steps": 999}}))
    with pytest.raises(ConfigError, match="another budget"):
        run_ablation(cfg, tmp_path, progress=False, log=lambda _: None)


def test_cli_lists_variants_and_rejects_a_typo(capsys):
    assert ablate_main(["--list"]) == 0
    assert "world-only" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="full"):
        ablate_main(["--preset", "ablation-debug", "--only", "fulll"])


def test_debug_ablation_end_to_end_then_resumes_only_what_is_missing(tmp_path):
    out = tmp_path / "abl"
    assert ablate_main(["--preset", "ablation-debug", "--out", str(out), "--no-progress"]) == 0
    cfg = ablation_preset("ablation-debug")
    runs = plan(cfg)
    assert len(runs) == 4 * 2  # k1-causal coincides with joint-k1
    done = {r.key: (out / "runs" / r.key / "result.json") for r in runs}
    assert all(p.exists() for p in done.values())
    res = json.loads(next(iter(done.values())).read_text())
    assert res["step"] == cfg.steps and res["commit"] is not None
    full = json.loads(done[run_key(resolve(cfg, "full", 0))].read_text())
    assert full["policy"]["episodes"] == 1 and {r["method"] for r in full["world"]} >= {
        "worldvla",
        "repeat-last",
    }
    assert "policy" not in json.loads(done[run_key(resolve(cfg, "world-only", 1))].read_text())
    assert json.loads((out / "baselines" / "results.json").read_text())["summary"].keys() == {
        "random",
        "replay",
    }
    table = (out / "table.md").read_text()
    assert "Claim 1" in table and "Claim 2" in table and "random" in table

    # A run killed after training (no result.json) is the only one redone; a result that
    # lacks a metric gets it from the saved checkpoint, without retraining.
    mtimes = {k: p.stat().st_mtime_ns for k, p in done.items()}
    victim = run_key(resolve(cfg, "joint-k1", 1))
    done[victim].unlink()
    old = run_key(resolve(cfg, "action-only-k1", 0))
    partial = json.loads(done[old].read_text())
    del partial["offline"]
    done[old].write_text(json.dumps(partial))
    import shutil

    shutil.rmtree(out / "runs" / old / "eval_offline")
    ckpt_mtime = (out / "runs" / old / "train" / "checkpoints" / "latest").stat().st_mtime_ns
    assert ablate_main(["--preset", "ablation-debug", "--out", str(out), "--no-progress"]) == 0
    assert done[victim].exists() and "offline" in json.loads(done[old].read_text())
    assert (out / "runs" / old / "train" / "checkpoints" / "latest").stat().st_mtime_ns == ckpt_mtime
    assert all(p.stat().st_mtime_ns == mtimes[k] for k, p in done.items() if k not in (victim, old))


def test_reusing_finished_data_stages_leaves_the_runs_provenance_alone(tmp_path):
    from worldvla.experiments import experiment_preset
    from worldvla.pipeline import DATA_STAGES, run_pipeline

    exp = experiment_preset("debug")
    doc = {
        "preset": exp.name,
        "experiment": json.loads(json.dumps(exp.to_dict())),
        "seed": exp.seed,
        "stages": {s: {"done": True, "seconds": 1.0} for s in DATA_STAGES},
        "suite": json.loads(json.dumps(exp.suite.to_dict())),
        "command": "worldvla quickstart --preset debug",
        "commit": "abc1234",
    }
    path = tmp_path / "stages.json"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    before = path.read_bytes()
    run_pipeline(exp, tmp_path, progress=False, log=lambda _: None, stages=DATA_STAGES)
    assert path.read_bytes() == before
