"""Installs a fastrader wheel into a fresh venv outside the checkout and runs it there.

    python tests/wheel_check.py dist/fastrader-*.whl     (make wheel-check; a step of .ci/run)

The venv reuses the third-party packages of the interpreter running this
script (a .pth line to its site-packages: no multi-GB torch download), but
gets fastrader only from the wheel, installed with
`pip install --no-build-isolation --no-deps`. From an empty directory it
then checks: `fastrader --version` and `fastrader doctor` (extension loads,
build facts), `python -m fastrader.run --help`, and that `fastrader run`
prints the summary and writes the five report files from the packaged sample
and model. Exits non-zero on the first failure.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import sysconfig
import tempfile
import venv
from pathlib import Path

FILES = ("tearsheet.html", "metrics.json", "trades.csv", "equity.csv", "signals.csv")


def run(cmd, cwd, env, check=True):
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    shown = " ".join(str(c) for c in cmd)
    if check and r.returncode != 0:
        sys.exit(f"wheel check: `{shown}` failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


def main(argv=None):
    args = sys.argv[1:] if argv is None else argv
    wheels = [w for a in args for w in glob.glob(a)]
    if len(wheels) != 1:
        sys.exit(f"usage: wheel_check.py WHEEL (got {wheels or args})")
    wheel = Path(wheels[0]).resolve()
    checkout = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory(prefix="fastrader-wheel-") as tmp:
        tmp = Path(tmp)
        env_dir, work = tmp / "venv", tmp / "empty"
        work.mkdir()
        venv.EnvBuilder(with_pip=False).create(env_dir)
        py = env_dir / "bin" / "python"
        site = Path(run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], work, None).stdout.strip())
        (site / "_reuse_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "FASTRADER_CPU_ISA")}
        env["PATH"] = f"{env_dir / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        run([py, "-m", "pip", "install", "-q", "--no-build-isolation", "--no-deps", str(wheel)], work, env)
        where = run([py, "-c", "import fastrader; print(fastrader.__file__)"], work, env).stdout.strip()
        if not where.startswith(str(site)) or where.startswith(str(checkout)):
            sys.exit(f"wheel check: fastrader imported from {where}, not from the wheel in {site}")
        fr = env_dir / "bin" / "fastrader"
        version = run([fr, "--version"], work, env).stdout
        doctor = run([fr, "doctor"], work, env).stdout
        run([py, "-m", "fastrader.run", "--help"], work, env)
        for sub in ("run", "train", "data", "doctor"):
            run([fr, sub, "--help"], work, env)
        names = run([py, "-c", "from fastrader.registry import available, resolve_strategy as r; "
                     "print(available()); r('trend_filter')"], work, env).stdout
        if "trend_filter" not in names:
            sys.exit(f"wheel check: the packaged example strategies are missing: {names}")
        r = run([fr, "run", "--no-progress"], work, env)
        if "total return" not in r.stdout or "report: " not in r.stdout:
            sys.exit(f"wheel check: no summary in `fastrader run` output:\n{r.stdout}\n{r.stderr}")
        if r.stderr.strip():
            sys.exit(f"wheel check: `fastrader run` wrote to stderr:\n{r.stderr}")
        out = work / r.stdout.split("report: ", 1)[1].strip()
        missing = [f for f in FILES if not (out / f).is_file() or (out / f).stat().st_size == 0]
        if missing:
            sys.exit(f"wheel check: {out} lacks {missing}")
        print(version.strip())
        print(doctor.strip())
        print(r.stdout.strip())
        print(f"wheel check: ok ({wheel.name} in a fresh venv, run from an empty directory; wrote {', '.join(FILES)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
