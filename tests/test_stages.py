"""The shared stage mechanism: records read back, times kept across failures, results reused."""

from __future__ import annotations

import json

import pytest

from worldvla.errors import ConfigError
from worldvla.utils.stages import StageRecord, reuse, timed


def _record(tmp_path):
    return StageRecord(tmp_path / "stages.json", "stages file", "use another --out directory")


def test_a_stage_runs_once_and_its_entry_keeps_the_format_of_stages_json(tmp_path):
    record = _record(tmp_path)
    assert record.doc == {} and not record.done("collect")
    record.run("collect", lambda entry: entry.update(kept=3))
    doc = json.loads((tmp_path / "stages.json").read_text())
    entry = doc["stages"]["collect"]
    assert entry["done"] is True and entry["kept"] == 3 and entry["seconds"] >= 0.0
    again = _record(tmp_path)
    assert again.done("collect") and again.doc == doc


def test_a_failing_stage_keeps_its_time_and_stays_not_done(tmp_path):
    record = _record(tmp_path)

    def fails(entry):
        entry["step"] = 7
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        record.run("train", fails)
    entry = _record(tmp_path).doc["stages"]["train"]
    assert entry["done"] is False and entry["step"] == 7 and entry["seconds"] > 0.0
    first = entry["seconds"]
    record.run("train", lambda entry: None)
    assert _record(tmp_path).doc["stages"]["train"]["seconds"] > first  # summed over attempts


def test_timed_adds_to_what_is_there(tmp_path):
    seconds = {"train": 10.0}
    with timed(seconds, "train"):
        pass
    with timed(seconds, "eval_world"):
        pass
    assert seconds["train"] >= 10.0 and seconds["eval_world"] >= 0.0


def test_an_unreadable_record_is_a_readable_error(tmp_path):
    path = tmp_path / "stages.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not a readable stages file .*use another --out"):
        _record(tmp_path)
    for doc in ([1, 2], {"stages": [1]}):
        path.write_text(json.dumps(doc))
        with pytest.raises(ConfigError, match="not a stages file"):
            _record(tmp_path)


def test_stamp_records_the_provenance(tmp_path):
    record = _record(tmp_path)
    record.stamp(preset="debug", seed=3)
    assert record.doc["preset"] == "debug" and record.doc["seed"] == 3
    assert {"command", "commit", "time", "machine"} <= record.doc.keys()


def test_reuse_reads_results_an_earlier_attempt_wrote(tmp_path):
    path = tmp_path / "results.json"
    calls = []

    def compute():
        calls.append(1)
        path.write_text(json.dumps({"success": 0.5}))
        return {"success": 0.5}

    assert reuse(path, compute) == {"success": 0.5}
    assert reuse(path, compute) == {"success": 0.5} and len(calls) == 1
