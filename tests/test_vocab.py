import ast
import pathlib
import re

import numpy as np
import pytest
import torch

from worldvla.vocab import SPECIAL_NAMES, Vocab, VocabConfig, chameleon_image_code, chameleon_token_names


def test_compact_layout_ranges_are_disjoint_and_padded():
    v = Vocab.build(VocabConfig(text_size=256, image_codes=512, action_bins=256, max_grid=64))
    assert v.size % 64 == 0 and v.size >= v.action_start + v.action_bins
    ids = set(v.specials.values())
    ranges = [
        range(v.grid_start, v.grid_start + v.max_grid + 1),
        range(v.text_start, v.text_start + v.text_size),
        range(v.image_start, v.image_start + v.image_codes),
        range(v.action_start, v.action_start + 256),
    ]
    seen = set(ids)
    for r in ranges:
        assert not seen & set(r)
        seen |= set(r)


def test_chameleon_reference_layout_matches_the_reference_checkpoints():
    v = Vocab.chameleon_reference()
    assert (v.image_start, v.image_start + v.image_codes - 1) == (4, 8195)
    assert (v.eoi, v.boi, v.sep, v.row_sep) == (8196, 8197, 8710, 8803)
    assert v.grid_id(16) == 8804 + 16
    assert (v.boa, v.eoa) == (10004, 15004)
    assert (v.action_ids(0), v.action_ids(255)) == (10006, 10261)
    assert v.size == 65536


def test_grid_unit_of_the_released_checkpoints_counts_32_pixel_patches():
    v = Vocab.chameleon_reference(grid_unit=2)
    assert (v.grid_id(16), v.grid_id(32), v.grid_id(2)) == (8804 + 8, 8804 + 16, 8804 + 1)
    with pytest.raises(ValueError, match="whole number of 2-code units"):
        v.grid_id(3)
    with pytest.raises(ValueError, match="outside"):
        v.grid_id(2 * (v.max_grid + 1))
    assert Vocab.from_dict(v.to_dict()) == v and v.to_dict()["grid_unit"] == 2
    # The default unit (one code) leaves vocab.json and the fingerprint as they were.
    plain = Vocab.chameleon_reference()
    assert "grid_unit" not in plain.to_dict() and plain.fingerprint() != v.fingerprint()
    with pytest.raises(ValueError, match="grid_unit"):
        Vocab.chameleon_reference(grid_unit=0)


def test_chameleon_token_names_and_image_code_names():
    v = Vocab.chameleon_reference(grid_unit=2)
    names = chameleon_token_names(v)
    assert (names["<s>"], names["<racm3:break>"], names["<eoss>"]) == (0, 8197, 8196)
    assert (names["<reserved08706>"], names["<reserved08799>"]) == (8710, 8803)
    assert names["<reserved08808>"] == 8812  # 8 patches: a 256² frame
    assert (names["<reserved10000>"], names["<reserved15000>"]) == (10004, 15004)
    assert chameleon_image_code("IMGIMGAZ") == 0 and chameleon_image_code("IMGIMGIBJBZ") == 8191
    assert chameleon_image_code("IMGIMGBAZ") == 10
    assert chameleon_image_code("<reserved08706>") is None and chameleon_image_code("IMGIMGZ") is None


def test_maps_and_predicates_work_on_numpy_and_torch():
    v = Vocab.build()
    codes = np.array([0, 5, v.image_codes - 1])
    assert np.array_equal(v.image_codes_of(v.image_ids(codes)), codes)
    t = torch.tensor([v.boa, v.action_ids(3), v.image_ids(7), v.pad])
    assert v.is_action_bin(t).tolist() == [False, True, False, False]
    assert v.is_image_code(t).tolist() == [False, False, True, False]
    with pytest.raises(ValueError):
        v.grid_id(v.max_grid + 1)


def test_save_load_round_trip_and_fingerprint(tmp_path):
    v = Vocab.build(VocabConfig(image_codes=1024))
    v.save(tmp_path / "vocab.json")
    assert Vocab.load(tmp_path / "vocab.json") == v
    assert v.fingerprint() != Vocab.build().fingerprint()
    (tmp_path / "bad.json").write_text('{"name": "x"}')
    with pytest.raises(ValueError, match="bad.json"):
        Vocab.load(tmp_path / "bad.json")


def test_invalid_layout_is_rejected():
    d = Vocab.build().to_dict()
    d["boa"] = d["image_start"]  # a special inside the image range
    with pytest.raises(ValueError, match="inside the image range"):
        Vocab.from_dict(d)


def test_no_literal_token_ids_outside_the_vocab_module():
    """STYLE §5: ids come from Vocab. Flag comparisons of token-ish names with int literals."""
    src = pathlib.Path(__file__).parents[1] / "src" / "worldvla"
    special = "|".join(SPECIAL_NAMES)
    pattern = re.compile(rf"\b(ids?|token|tok|input_ids)\b\s*(==|!=)\s*\d{{2,}}|\b({special})\s*=\s*\d+")
    offenders = []
    for path in src.rglob("*.py"):
        if path.name == "vocab.py":
            continue
        text = path.read_text()
        ast.parse(text)  # every module must at least parse
        for n, line in enumerate(text.splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(src)}:{n}: {line.strip()}")
    assert not offenders, "literal token ids outside vocab.py:\n" + "\n".join(offenders)


def test_atomic_writes_get_normal_file_permissions(tmp_path):
    import os

    from worldvla.utils.io import atomic_write_text

    atomic_write_text(tmp_path / "x.json", "{}")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o666 & ~umask
