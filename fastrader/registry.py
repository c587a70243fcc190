"""Find a strategy class by name.

``--strategy`` accepts:

* a built-in name (``model``, ``model_long_only``);
* a file name from a ``strategies/`` folder: ``./strategies/NAME.py`` first,
  then the ``strategies/`` folder of the fastrader checkout, then the copies
  of those examples inside an installed package. The file defines
  ``Strategy`` (or exactly one Backtrader strategy class);
* ``module:Class`` or ``path/to/file.py:Class``.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from pathlib import Path

import backtrader as bt

from .errors import ConfigError
from .strategy import BUILTIN

REPO_STRATEGIES = Path(__file__).resolve().parent.parent / "strategies"
# A wheel has no checkout around it: setup.py copies the examples here.
PACKAGED_STRATEGIES = Path(__file__).resolve().parent / "assets" / "strategies"


def strategy_dirs() -> list[Path]:
    # The checkout's folder only in a checkout: installed, the package's parent
    # is site-packages, whose `strategies/` (if any) belongs to someone else.
    in_checkout = (REPO_STRATEGIES.parent / "pyproject.toml").is_file()
    dirs = [Path.cwd() / "strategies"] + ([REPO_STRATEGIES] if in_checkout else []) + [PACKAGED_STRATEGIES]
    seen, out = set(), []
    for d in dirs:
        r = d.resolve()
        if r not in seen and r.is_dir():
            seen.add(r)
            out.append(r)
    return out


def available() -> list[str]:
    names = set(BUILTIN)
    for d in strategy_dirs():
        names.update(p.stem for p in d.glob("*.py") if not p.stem.startswith("_"))
    return sorted(names)


def _load_file(path: Path):
    spec = importlib.util.spec_from_file_location(f"fastrader_user_strategy_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot import strategy file {path}")
    mod = importlib.util.module_from_spec(spec)
    # Backtrader's metaclasses look classes' modules up in sys.modules.
    sys.modules[spec.name] = mod
    try:
        spec.loader.exec_module(mod)
    except Exception as exc:  # the user's file: report it in one line
        del sys.modules[spec.name]
        raise ConfigError(f"strategy file {path} failed to import: {type(exc).__name__}: {exc}") from exc
    return mod


def _pick_class(mod, where: str, cls_name: str | None = None):
    if cls_name:
        cls = getattr(mod, cls_name, None)
        if cls is None:
            raise ConfigError(f"{where} has no class {cls_name!r}")
    elif hasattr(mod, "Strategy"):
        cls = mod.Strategy
    else:
        own = [
            c
            for _, c in inspect.getmembers(mod, inspect.isclass)
            if issubclass(c, bt.Strategy) and c.__module__ == mod.__name__
        ]
        if len(own) != 1:
            raise ConfigError(f"{where} must define `Strategy` or exactly one bt.Strategy subclass (found {len(own)})")
        cls = own[0]
    if not (inspect.isclass(cls) and issubclass(cls, bt.Strategy)):
        raise ConfigError(f"{where}: {getattr(cls, '__name__', cls)!r} is not a backtrader Strategy")
    return cls


def resolve_strategy(name: str) -> type[bt.Strategy]:
    if name in BUILTIN:
        return BUILTIN[name]
    if ":" in name:
        target, cls_name = name.rsplit(":", 1)
        if target.endswith(".py"):
            p = Path(target)
            if not p.is_file():
                raise ConfigError(f"strategy file not found: {p}")
            return _pick_class(_load_file(p), str(p), cls_name)
        try:
            mod = importlib.import_module(target)
        except ImportError as exc:
            raise ConfigError(f"cannot import strategy module {target!r}: {exc}") from exc
        return _pick_class(mod, f"module {target}", cls_name)
    for d in strategy_dirs():
        p = d / f"{name}.py"
        if p.is_file():
            return _pick_class(_load_file(p), str(p))
    raise ConfigError(f"unknown strategy {name!r}; available: {', '.join(available())} (or module:Class)")
