"""The preset registry: one mechanism for every kind, described entries, a "did you mean" naming
the kind, and the ``worldvla presets`` listing that gathers them all."""

from __future__ import annotations

import pytest

from worldvla.cli import main as cli_main
from worldvla.commands.presets import KINDS, registry
from worldvla.errors import ConfigError
from worldvla.utils.registry import Registry


def test_registry_registers_gets_and_refuses_mistakes():
    reg: Registry[int] = Registry("number preset")
    assert reg.register("one", 1, "the first") == 1
    reg.register("two", 2, "the second")
    assert reg.get("two") == 2 and reg.names() == ("one", "two") and list(reg) == ["one", "two"]
    assert "one" in reg and "three" not in reg and reg.description("one") == "the first"
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("one", 3, "again")
    with pytest.raises(ValueError, match="one-line description"):
        reg.register("three", 3, "")
    with pytest.raises(ValueError, match="one-line description"):
        reg.register("three", 3, "two\nlines")
    with pytest.raises(ConfigError, match="unknown number preset 'too'. Did you mean 'two'"):
        reg.get("too")


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_registry_describes_its_presets_and_names_its_kind_on_a_typo(kind):
    reg = registry(kind)
    assert isinstance(reg, Registry) and reg.names()
    for name in reg.names():
        description = reg.description(name)
        assert description.strip() and "\n" not in description, (kind, name)
        assert reg.get(name) is not None
    first = reg.names()[0]
    with pytest.raises(ConfigError, match=f"unknown {reg.kind} '{first}x'. Did you mean '{first}'"):
        reg.get(first + "x")


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "model"])  # model sizes carry no name
def test_every_named_preset_carries_its_own_name(kind):
    """A preset knows the name it is registered under: run records name the parts of an
    experiment (suite, tokenizer, training) by it."""
    reg = registry(kind)
    assert [reg.get(name).name for name in reg.names()] == list(reg.names())


def test_presets_command_lists_every_kind_with_descriptions(capsys):
    assert cli_main(["presets"]) == 0
    out = capsys.readouterr().out
    for kind in KINDS:
        module, attribute = KINDS[kind]
        assert f"{kind} ({module}.{attribute}):" in out
        reg = registry(kind)
        for name in reg.names():
            assert any(
                line.split() and line.split()[0] == name and reg.description(name) in line
                for line in out.splitlines()
            ), (kind, name)


def test_presets_command_lists_one_kind_and_rejects_an_unknown_one(capsys):
    assert cli_main(["presets", "model"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("model (worldvla.model.config.MODEL_PRESETS):") and "chameleon-7b" in out
    assert "mw-quick" not in out
    assert cli_main(["presets", "modle"]) == 2
    assert "unknown preset kind 'modle'. Did you mean 'model'?" in capsys.readouterr().err
