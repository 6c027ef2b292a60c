"""How an env renders its frames beyond camera name and resolution: recorded with the data,
carried into checkpoints (``DataLayout.view``) and compared at evaluation, so that a policy
is never scored on frames rendered differently from those it was trained on."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Meta-World suite fields that change the picture, with the value a suite (or a data file
# written before the field existed) has when it does not set them.
# ``protocol`` changes the picture too: "lerobot" moves corner2 and turns it 180° (envs/mt50.py).
VIEW_DEFAULTS: dict[str, Any] = {"camera_aim": None, "camera_zoom": 1.0, "protocol": "worldvla"}


def suite_view(suite: Mapping[str, Any]) -> dict[str, Any]:
    """The view fields of a suite's ``to_dict()`` (or a data file's recorded suite, or a view
    stored before a field existed), normalized: missing fields at their defaults."""
    aim = suite.get("camera_aim", VIEW_DEFAULTS["camera_aim"])
    return {
        "camera_aim": None if aim is None else [float(x) for x in aim],
        "camera_zoom": float(suite.get("camera_zoom", VIEW_DEFAULTS["camera_zoom"])),
        "protocol": str(suite.get("protocol", VIEW_DEFAULTS["protocol"])),
    }
