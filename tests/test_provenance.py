"""Provenance records the command as typed, never a local path of the machine."""

from worldvla.utils.provenance import command_line


def test_command_line_names_the_cli_however_it_was_started():
    args = ["ablate", "--preset", "x"]
    assert command_line(["/usr/local/bin/worldvla", *args]) == "worldvla ablate --preset x"
    assert command_line(["/home/me/repo/src/worldvla/cli.py", *args]) == "worldvla ablate --preset x"
    bench = ["benchmarks/bench_model.py", "--threads", "2"]
    assert command_line(bench) == "benchmarks/bench_model.py --threads 2"
    assert command_line(["/home/me/repo/benchmarks/bench_model.py"]) == "bench_model.py"
    assert command_line([]) == ""
