"""``fastrader COMMAND [options]``: one command for every fastrader tool.

``fastrader run ...`` is exactly ``python -m fastrader.run ...``, and so on for
every command: the command name is the module's name, so a tool added as
``fastrader/<name>.py`` (or a package with ``__main__.py``) is a command at
once. Exit codes: 0 ok, 2 bad input (``error: ...`` on stderr), 1 internal
error (a traceback: please report it).
"""

from __future__ import annotations

import importlib.util
import runpy
import sys

# Shown by --help, in this order; dispatch itself goes by module name.
COMMANDS = {
    "run": "backtest a model-driven strategy and write a tearsheet",
    "train": "train a model checkpoint on candles",
    "data": "download, inspect and export cached candles (ccxt)",
    "check": "check that a strategy never looks ahead",
    "sweep": "parameter sweeps of backtests",
    "walkforward": "walk-forward studies (train, then test on the next period)",
    "doctor": "print what was built (extension, torch, CPU paths, CUDA archs)",
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [
        "usage: fastrader [--version] COMMAND [options]",
        "",
        "commands (each is `python -m fastrader.COMMAND`; `fastrader COMMAND --help` for its options):",
    ]
    lines += [f"  {name:<{width}}  {text}" for name, text in COMMANDS.items()]
    lines += ["", "exit codes: 0 ok, 2 bad input, 1 internal error"]
    return "\n".join(lines)


def _module_for(command: str) -> str | None:
    """The module `python -m fastrader.<command>` would run, or None."""
    if not command.isidentifier() or command.startswith("_"):
        return None
    name = f"fastrader.{command}"
    try:
        spec = importlib.util.find_spec(name)
    except ImportError:
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations is not None:  # a package: its __main__
        main = f"{name}.__main__"
        return main if importlib.util.find_spec(main) is not None else None
    return name


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0 if args else 2
    if args[0] in ("-V", "--version"):
        from fastrader.doctor import version_text

        print(version_text())
        return 0
    command, rest = args[0], args[1:]
    module = _module_for(command)
    if module is None:
        if command in COMMANDS:
            print(f"error: `fastrader {command}` is not available in this version (no module fastrader.{command})", file=sys.stderr)
        else:
            print(f"error: unknown command {command!r}; choose one of {', '.join(COMMANDS)} (fastrader --help)", file=sys.stderr)
        return 2
    # Exactly what `python -m` does: run the module as __main__ with its own argv.
    saved = sys.argv
    sys.argv = [f"fastrader {command}"] + rest
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exc.code
        if code is None or isinstance(code, int):
            return code or 0
        print(code, file=sys.stderr)  # SystemExit("message") prints and exits 1
        return 1
    finally:
        sys.argv = saved
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
