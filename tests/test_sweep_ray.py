"""The Ray backend on a real local runtime (one per module): loopback only, and the same table as the pool."""

import os

import pandas as pd
import pytest

from _sweep import is_loopback, listening_sockets, process_tree, results_only, socket_inodes, write_inputs
from fastrader.sweep import run_sweep, spec_from_dict

ray = pytest.importorskip("ray", reason="the Ray extra is not installed (pip install 'fastrader[ray]')")


@pytest.fixture(scope="module")
def ray_backend():
    from fastrader.sweep.backends import RayBackend

    if ray.is_initialized():
        ray.shutdown()
    b = RayBackend(workers=2)
    b.start(echo=lambda *a: None)
    yield b
    b.close()


def quiet(*a):
    pass


def test_local_runtime_listens_on_loopback_only(ray_backend):
    # Ray's processes (GCS, raylet with its object manager, workers, agents) are this process's descendants.
    ray.get([ray.remote(lambda: 1).remote() for _ in range(2)])  # workers up
    owners = {}
    for pid in process_tree(os.getpid()):
        for inode in socket_inodes(pid):
            owners[inode] = pid
    mine = [(ip, port, owners[inode]) for ip, port, inode in listening_sockets() if inode in owners]
    names = {pid: open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")[0].decode(errors="replace") for _, _, pid in mine}
    assert len(mine) >= 3, mine  # GCS, raylet, workers at least: the check saw Ray's sockets
    assert any("gcs_server" in n for n in names.values()) and any("raylet" in n for n in names.values()), names
    wide = [(ip, port, names[pid]) for ip, port, pid in mine if not is_loopback(ip)]
    assert not wide, f"Ray listens beyond loopback: {wide}"
    assert 8265 not in {port for _, port, _ in mine}  # no dashboard
    assert ray_backend.where.startswith("ray: local runtime") and "127.0.0.1:" in ray_backend.where


def model_spec(out, backend, start="2022-11-15"):
    return spec_from_dict({
        "sweep": {"backend": backend, "workers": 2, "progress": False, "tearsheet": False, "out": str(out)},
        "run": {"strategy": "model", "start": start},
        "space": {"threshold": [0.75, 1.5], "params.exit_threshold": [0.0, 0.5], "params.allow_short": [True, False]},
    })


def test_backends_agree_row_for_row(tmp_path, ray_backend):
    # 8 trials of the shipped model's strategy on the sample: one prepare (candles, model, signals) shared by all.
    res_ray = run_sweep(model_spec(tmp_path / "ray", "ray"), echo=quiet, backend=ray_backend)
    res_local = run_sweep(model_spec(tmp_path / "local", "local"), echo=quiet)
    a, b = results_only(res_ray.table), results_only(res_local.table)
    assert res_ray.failed == 0 and len(a) == 8
    assert a["n_trades"].min() > 0 and a["sharpe"].nunique() > 4  # trials that differ, not eight copies
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    recs = list((tmp_path / "ray" / "trials").glob("*.json"))
    import json

    groups = {json.loads(p.read_text())["group"] for p in recs}
    assert len(groups) == 1  # every trial ran on the one shared prepare()
    assert len(list((tmp_path / "local" / "shared").glob("*.parquet"))) == 1


def test_ray_trial_failure_is_a_record(tmp_path, ray_backend):
    data, strats = write_inputs(tmp_path / "in", n=600)
    spec = spec_from_dict({
        "sweep": {"backend": "ray", "progress": False, "tearsheet": False, "out": str(tmp_path / "o")},
        "run": {"data": str(data), "strategy": f"{strats}:Side"},
        "space": {"params.explode": [False, True]},
    })
    res = run_sweep(spec, echo=quiet, backend=ray_backend)
    assert list(res.table["status"]) == ["ok", "failed"]
    assert "planted failure" in res.table.iloc[1]["error"]
