"""Run a sweep: points -> trials -> backend -> records on disk -> table, report, summary."""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from ..errors import ConfigError
from . import overfit, results
from . import trial as T
from .backends import make_backend
from .config import SweepSpec
from .space import grid_points, optuna_distributions, random_points


@dataclass
class TrialSpec:
    id: str
    point: dict
    options: dict
    phase: str = "in_sample"

    @property
    def sopts(self) -> dict:
        return T.shared_options(self.options)


@dataclass
class SweepResult:
    out_dir: Path
    table: pd.DataFrame
    summary: dict
    ran: int = 0
    skipped: int = 0
    failed: int = 0
    files: dict = field(default_factory=dict)


def _trial_spec(spec: SweepSpec, point: dict, phase: str = "in_sample") -> TrialSpec:
    opts = T.resolve_options(spec.run, point, spec.walkforward if spec.kind == "walkforward" else None)
    return TrialSpec(T.trial_id(opts, phase, spec.holdout), point, opts, phase)


def _group_key(t: TrialSpec, holdout) -> str:
    return T.short_hash({"shared": t.sopts, "phase": t.phase, "holdout": holdout})


def _predownload(trials: list[TrialSpec]) -> None:
    # Exchange history is downloaded once here, into the shared candle cache; every group's
    # prepare() then reads the cache and makes no network call of its own.
    from ..data import load_history

    seen = set()
    for t in trials:
        o = t.options
        if not o.get("exchange"):
            continue
        k = (o["exchange"], o["symbol"], o["timeframe"], o["since"], o["until"], o["api_url"], o["cache_dir"])
        if k in seen:
            continue
        seen.add(k)
        if o["since"] is None:
            raise ConfigError("--exchange needs --since (first candle, e.g. 2024-01-01)")
        load_history(o["exchange"], o["symbol"], o["timeframe"], o["since"], o["until"], cache_dir=o["cache_dir"],
                     api_url=o["api_url"], progress=True)


def _check_paths(trials: list[TrialSpec]) -> None:
    for t in trials:
        for k in ("data", "model", "signals"):
            v = t.options.get(k)
            if v and not Path(v).exists():
                raise ConfigError(f"{k} file not found: {v}")


class _Run:
    """Submits trials to a backend (at most ``cap`` in flight) and writes each record as it arrives."""

    def __init__(self, spec, backend, store, bar):
        self.spec, self.backend, self.store, self.bar = spec, backend, store, bar
        self.ran = self.failed = 0
        self.inflight = {}

    def submit(self, t: TrialSpec) -> None:
        key = _group_key(t, self.spec.holdout)
        self.backend.submit_group(key, t.sopts, t.phase, self.spec.holdout)
        self.backend.submit_trial(t.id, t.options, key)
        self.inflight[t.id] = t

    def collect(self) -> dict:
        tid, rec = self.backend.next_result()
        t = self.inflight.pop(tid)
        full = {"id": tid, "phase": t.phase, "point": t.point, "options": t.options, **rec,
                "finished_at": time.time()}
        self.store.write(full)  # a record is on disk before the next one is awaited
        self.ran += 1
        self.failed += full["status"] != "ok"
        if self.bar is not None:
            self.bar.update()
            self.bar.set_postfix(done=self.ran - self.failed, failed=self.failed)
        return full

    def run_all(self, todo: list[TrialSpec], cap: int) -> list[dict]:
        out, it = [], iter(todo)
        for t in it:
            self.submit(t)
            if len(self.inflight) >= cap:
                break
        for t in it:
            out.append(self.collect())
            self.submit(t)
        while self.inflight:
            out.append(self.collect())
        return out


def _progress(spec, total, desc):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="trial", disable=not spec.progress or total == 0, leave=True)


def _metric_value(rec, spec) -> float | None:
    v = (rec.get("metrics") or {}).get(spec.metric) if rec.get("status") == "ok" else None
    return v if isinstance(v, (int, float)) and math.isfinite(v) else None


def _optuna_loop(spec, run: _Run, existing: dict, cap: int, echo) -> list[dict]:
    try:
        import optuna
    except ImportError:
        raise ConfigError("search = 'optuna' needs Optuna: pip install 'fastrader[optuna]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dists = optuna_distributions(spec.space)
    study = optuna.create_study(direction="maximize" if spec.mode == "max" else "minimize",
                                sampler=optuna.samplers.TPESampler(seed=spec.seed))
    records = []
    for rec in existing.values():  # earlier runs' trials inform the sampler (and count towards `trials`)
        if rec.get("phase") != "in_sample" or set(rec["point"]) != set(dists):
            continue
        v = _metric_value(rec, spec)
        try:
            study.add_trial(optuna.trial.create_trial(
                params=rec["point"], distributions=dists, value=v,
                state=optuna.trial.TrialState.COMPLETE if v is not None else optuna.trial.TrialState.FAIL))
        except ValueError:
            continue  # a point outside the current space
        records.append(rec)
    asked = {}  # tid -> optuna trial
    tries = 0
    while len(records) + len(asked) < spec.trials or asked:
        while len(records) + len(asked) < spec.trials and len(asked) < cap and tries < 20 * spec.trials:
            tries += 1
            ot = study.ask(dists)
            t = _trial_spec(spec, dict(ot.params))
            if t.id in existing or t.id in asked or any(r["id"] == t.id for r in records):
                prev = existing.get(t.id) or next((r for r in records if r["id"] == t.id), None)
                v = _metric_value(prev, spec) if prev else None
                study.tell(ot, v, state=None if v is not None else optuna.trial.TrialState.FAIL)
                continue
            asked[t.id] = ot
            run.submit(t)
        if not asked:
            break
        rec = run.collect()
        ot = asked.pop(rec["id"])
        v = _metric_value(rec, spec)
        if v is None:
            study.tell(ot, state=optuna.trial.TrialState.FAIL)
        else:
            study.tell(ot, v)
        records.append(rec)
    return records


def run_sweep(spec: SweepSpec, echo=print, backend=None) -> SweepResult:
    """Run (or resume) a sweep and write its results into ``spec.out_dir``."""
    spec.check()
    t_start = time.perf_counter()
    out = spec.out_dir
    out.mkdir(parents=True, exist_ok=True)
    store = results.TrialStore(out / "trials")
    existing = store.load()
    keys = spec.keys

    if spec.search == "grid":
        points = grid_points(spec.space)
    elif spec.search == "random":
        points = random_points(spec.space, spec.trials, spec.seed)
    else:
        points = []
    trials, seen = [], set()
    for p in points:
        t = _trial_spec(spec, p)
        if t.id not in seen:
            seen.add(t.id)
            trials.append(t)
    if spec.search == "optuna":  # fail fast on bad base options before starting anything
        _check_paths([_trial_spec(spec, {})])
    _check_paths(trials)

    def needs_run(t):
        rec = existing.get(t.id)
        return rec is None or (spec.retry_failed and rec["status"] != "ok")

    todo = [t for t in trials if needs_run(t)]
    n_total = spec.trials if spec.search == "optuna" else len(trials)
    if spec.search != "optuna":
        echo(f"sweep {spec.name}: {len(trials)} trials, {len(trials) - len(todo)} already in {out}, {len(todo)} to run")
    else:
        echo(f"sweep {spec.name}: Optuna search of {spec.trials} trials into {out}")
    (out / "sweep.json").write_text(json.dumps({k: v for k, v in asdict(spec).items() if k != "space"}
                                               | {"space": [asdict(d) for d in spec.space]}, indent=2, default=str))

    owned = backend is None  # a backend passed in (one runtime for many sweeps) is started once and left open
    backend = backend or make_backend(spec, out / "shared")
    if hasattr(backend, "shared_dir"):
        backend.shared_dir = out / "shared"
    started = False
    run = None
    t_trials = 0.0
    try:
        need_backend = bool(todo) or spec.search == "optuna" or spec.holdout
        if need_backend:
            _predownload(todo)
            if not getattr(backend, "started", False):
                backend.start(echo)
            started = True
        cap = max(1, 2 * backend.slots) if started else 1
        t0 = time.perf_counter()
        if spec.search == "optuna":
            bar = _progress(spec, spec.trials, "sweep")
            run = _Run(spec, backend, store, bar)
            records = _optuna_loop(spec, run, existing, cap, echo)
        else:
            bar = _progress(spec, len(todo), "sweep")
            run = _Run(spec, backend, store, bar)
            fresh = {r["id"]: r for r in run.run_all(todo, cap)}
            records = [fresh.get(t.id) or existing[t.id] for t in trials]
        if bar is not None:
            bar.close()
        t_trials = time.perf_counter() - t0
        ran_in = run.ran

        summary = {"name": spec.name, "out": str(out), "backend": spec.backend, "search": spec.search,
                   "metric": spec.metric, "mode": spec.mode, "trials": len(records),
                   "ran": ran_in, "skipped": len(records) - ran_in,
                   "failed": sum(r["status"] != "ok" for r in records), "trials_seconds": t_trials,
                   "where": getattr(backend, "where", "") or f"local pool of {getattr(backend, 'workers', '?')}"}
        if ran_in and t_trials > 0:
            summary["trials_per_minute"] = ran_in / t_trials * 60
        df = results.table(records, keys, spec.metric, spec.mode)
        files = results.write_table(df, out)

        # overfitting statistics on the trial matrix
        mat = overfit.returns_matrix(records)
        ppy = int(spec.run.get("periods_per_year", 365))
        pbo = dsr = None
        if mat.shape[1] >= 2 and mat.shape[0] >= 4:
            pbo = overfit.pbo_cscv(mat.to_numpy())
            dsr = overfit.deflated_sharpe(mat.to_numpy())
            summary["pbo"] = pbo.as_dict()
            summary["deflated_sharpe"] = dsr.as_dict() | {"selected_trial": mat.columns[dsr.selected]}
        summary["overfitting"] = overfit.verdict(pbo, dsr, ppy)

        # held-out period: the best in-sample trials, backtested on bars they never saw
        if spec.holdout:
            ranked = [r for r in results.rank_records(records, spec.metric, spec.mode) if r["status"] == "ok"]
            top = ranked[: spec.holdout_top]
            hts = [TrialSpec(T.trial_id(r["options"], "holdout", spec.holdout), r["point"], r["options"], "holdout")
                   for r in top]
            held_existing = {t.id: existing[t.id] for t in hts if t.id in existing and not
                             (spec.retry_failed and existing[t.id]["status"] != "ok")}
            run.bar = None
            for t in hts:
                if t.id not in held_existing:
                    run.submit(t)
            while run.inflight:
                rec = run.collect()
                held_existing[rec["id"]] = rec
            held = {r["id"]: held_existing.get(T.trial_id(r["options"], "holdout", spec.holdout)) for r in top}
            hdf = results.holdout_table(top, held, keys, spec.metric, spec.mode)
            hdf.to_csv(out / "holdout.csv", index=False)
            files["holdout_csv"] = out / "holdout.csv"
            summary["holdout"] = {"start": spec.holdout, "rows": json.loads(hdf.to_json(orient="records"))}
    finally:
        if started and owned:
            backend.close()
        elif started:
            backend.reset()

    # pictures and the best trial's tearsheet, from the records on disk
    hk = spec.heatmap or results.default_heatmap_keys(df, keys)
    if hk:
        p = results.heatmap(df, hk[0], hk[1], spec.metric, spec.mode, out / f"heatmap_{_safe(hk[0])}__{_safe(hk[1])}.png")
        if p:
            files["heatmap"] = p
    ok = [r for r in results.rank_records(records, spec.metric, spec.mode) if r["status"] == "ok"]
    if ok:
        summary["best"] = {"trial": ok[0]["id"], "point": ok[0]["point"],
                           "metrics": {k: ok[0]["metrics"].get(k) for k in results.METRIC_COLUMNS}}
        files.update(best_report(ok[0], spec, out / "best"))
    summary["files"] = {k: str(v) for k, v in files.items()}
    summary["wall_seconds"] = time.perf_counter() - t_start
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    files["summary"] = out / "summary.json"
    return SweepResult(out, df, summary, summary["ran"], summary["skipped"], summary["failed"], files)


def _safe(k: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in k)


def best_report(rec: dict, spec: SweepSpec, out: Path) -> dict:
    """The best trial run again in this process: its result files and tearsheet (the trial's own bars)."""
    from ..pipeline import backtest, report
    from ..registry import resolve_strategy
    from ..strategy import ModelStrategy

    torch = None
    if issubclass(resolve_strategy(rec["options"]["strategy"]), ModelStrategy) and not rec["options"].get("signals"):
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(max(1, int(spec.cpus_per_trial)))  # as in the workers: the same signals to the bit
    try:
        shared = T.prepare_shared(T.shared_options(rec["options"]), "in_sample", spec.holdout)
        if shared.error:
            return {}
        prep = T.build_prepared(rec["options"], shared)
    finally:
        if torch is not None:
            torch.set_num_threads(threads)
    prep.cfg.out = str(out)
    prep.cfg.tearsheet = spec.tearsheet
    outcome = report(prep, backtest(prep))
    return {"best_" + k: v for k, v in outcome.files.items()}


def summary_text(res: SweepResult, spec: SweepSpec) -> str:
    s = res.summary
    lines = []
    rate = f", {s['trials_per_minute']:.1f} trials/min" if s.get("trials_per_minute") else ""
    lines.append(f"sweep {spec.name}: {s['trials']} trials ({res.ran} ran, {res.skipped} already done, "
                 f"{s['failed']} failed) in {s['trials_seconds']:.1f} s{rate}; {s['where']}")
    if len(res.table):
        cols = ["rank", "trial", *spec.keys, spec.metric] + [c for c in ("total_return", "max_drawdown", "n_trades")
                                                               if c != spec.metric]
        lines.append(f"best by {spec.metric} ({spec.mode}):")
        lines.append(results.text_table(res.table, cols, 5))
    fails = res.table[res.table["status"] != "ok"] if len(res.table) else res.table
    if len(fails):
        lines.append(f"failed trials ({len(fails)}), first: {fails.iloc[0]['trial']}: {fails.iloc[0]['error']}")
    for line in s.get("overfitting", []):
        lines.append(line)
    if "holdout" in s:
        lines.append(f"held out from {spec.holdout} (best {spec.holdout_top} in sample, backtested on the held-out bars):")
        h = pd.DataFrame(s["holdout"]["rows"])
        if len(h):
            lines.append(results.text_table(h, ["in_sample_rank", "trial", f"{spec.metric}_in_sample",
                                                f"{spec.metric}_held_out", "total_return_held_out", "held_out_rank"], 50))
    lines.append("files: " + ", ".join(str(Path(v).relative_to(res.out_dir)) if str(v).startswith(str(res.out_dir)) else str(v)
                                       for k, v in res.files.items() if not k.startswith("best_") or k == "best_tearsheet"))
    return "\n".join(lines)
