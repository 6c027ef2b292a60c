"""``worldvla`` command line: a thin dispatcher.

Each sub-command lives in ``worldvla.commands.<module>`` and exposes ``main(argv) -> int``;
it parses its arguments into a config and calls one library function. Errors the user can
fix (:class:`worldvla.errors.WorldVLAError`) are printed as one line with exit status 2;
so is any other exception (a file system error, a bug), with its type, instead of a
traceback. ``--verbose`` (anywhere on the command line) or ``WORLDVLA_VERBOSE=1`` prints the
full traceback as well.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback

from worldvla.errors import WorldVLAError

COMMANDS: dict[str, tuple[str, str]] = {
    "collect": ("collect", "run scripted experts and write demonstrations to HDF5"),
    "train-tokenizer": ("train_tokenizer", "train the VQ image tokenizer on an episode store"),
    "tokenize": ("tokenize", "encode an episode store into a token cache"),
    "train": ("train", "train the action world model"),
    "eval-policy": ("eval_policy", "closed-loop success rate in simulation"),
    "eval-world": ("eval_world", "world-model rollouts: PSNR / SSIM / LPIPS / FVD"),
    "probe-world": ("probe_world", "imagine actions of your choosing from one start, beside the simulator"),
    "eval-actions": ("eval_actions", "held-out action error of generated chunks, with an image probe"),
    "report": ("report", "write report.md / report.html for a run directory"),
    "compare": ("compare", "held-out losses of runs at equal exposure to one sample kind"),
    "quickstart": ("quickstart", "collect -> tokenizer -> tokenize -> train -> evaluate -> report"),
    "ablate": ("ablate", "reproduce the paper's ablations"),
    "serve": ("serve", "serve a policy over websockets (msgpack)"),
    "ingest-libero": ("ingest_libero", "convert official LIBERO demonstrations"),
    "convert": ("convert", "Hugging Face Chameleon checkpoints (WorldVLA releases) <-> project checkpoints"),
    "presets": ("presets", "list every kind of named preset, with what each one is"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: worldvla <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run 'worldvla <command> --help' for the options of one command."]
    lines += ["--verbose (or WORLDVLA_VERBOSE=1) shows the full traceback of an error."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in argv or os.environ.get("WORLDVLA_VERBOSE", "") not in ("", "0")
    argv = [a for a in argv if a != "--verbose"]
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(name, list(COMMANDS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        print(f"worldvla: unknown command {name!r}.{hint}\n\n{_usage()}", file=sys.stderr)
        return 2
    target = f"worldvla.commands.{COMMANDS[name][0]}"
    try:
        return int(importlib.import_module(target).main(rest) or 0)
    except KeyboardInterrupt:
        print(f"worldvla {name}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # one readable line instead of a traceback; --verbose shows it
        if isinstance(e, ModuleNotFoundError) and e.name == target:
            print(f"worldvla: command {name!r} is not available in this version", file=sys.stderr)
            return 2
        if verbose:
            traceback.print_exc()
        print(f"worldvla {name}: error: {_one_line(e)}", file=sys.stderr)
        return 2


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or "(no message)"
    if isinstance(e, WorldVLAError):
        return text
    # Not an error this project anticipated: name its kind and where the details are.
    return f"{type(e).__name__}: {text} (run with --verbose for the traceback)"


if __name__ == "__main__":
    sys.exit(main())
