"""Definitions stored before a config field existed read back with that field at its default."""

import json

from worldvla.data.datasets import DataLayout
from worldvla.utils.field_defaults import with_defaults


def test_missing_fields_take_their_defaults_and_stored_values_win():
    full = json.loads(json.dumps(DataLayout(action_dim=4, grid=(8, 8), history=1, chunk_len=5).to_dict()))
    old = {k: v for k, v in full.items() if k not in ("view", "prompts")}  # written before both existed
    assert with_defaults(old, DataLayout) == full  # a nested dataclass default comes back as its dict
    assert with_defaults({**old, "camera": "corner"}, DataLayout)["camera"] == "corner"
    assert with_defaults(None, DataLayout) is None
