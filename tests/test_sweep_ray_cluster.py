"""Multi-node by simulation: a real Ray cluster of a head and a worker node on this machine (127.0.0.1)."""

import json

import pytest

from _sweep import write_inputs
from fastrader.sweep import run_sweep, spec_from_dict

ray = pytest.importorskip("ray", reason="the Ray extra is not installed (pip install 'fastrader[ray]')")


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    from fastrader.sweep.backends import loopback_env

    if ray.is_initialized():
        ray.shutdown()
    with loopback_env():
        c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
        c.add_node(num_cpus=1)
        c.wait_for_nodes()
    yield c
    ray.shutdown()
    c.shutdown()


def test_sweep_runs_on_both_nodes(tmp_path, cluster):
    from fastrader.sweep.backends import RayBackend

    data, strats = write_inputs(tmp_path / "in", n=1500)
    spec = spec_from_dict({
        "sweep": {"backend": "ray", "address": cluster.address, "progress": False, "tearsheet": False,
                  "out": str(tmp_path / "o")},
        "run": {"data": str(data), "strategy": f"{strats}:Coin"},
        "space": {"params.seed": list(range(8))},
    })
    lines = []
    backend = RayBackend(address=cluster.address)
    res = run_sweep(spec, echo=lines.append, backend=backend)
    try:
        assert res.failed == 0 and len(res.table) == 8
        assert any(line.startswith(f"ray: joined the cluster at {cluster.address}") and "2 nodes" in line
                   for line in lines), lines
        nodes = {json.loads(p.read_text())["node"] for p in (tmp_path / "o" / "trials").glob("*.json")}
        alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        assert len(alive) == 2
        assert nodes == alive, (nodes, alive)  # both nodes ran trials
    finally:
        backend.close()
