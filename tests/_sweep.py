"""Shared pieces of the sweep tests: seeded test strategies, gapping candles on disk, table comparison."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from fastrader.testing.candles import gapping_candles

STRATEGIES = '''
import backtrader as bt
import numpy as np


class Coin(bt.Strategy):
    """Random long/flat/short flips, seeded: no edge by construction."""
    params = dict(seed=0, p_flip=0.05, stake=0.9)

    def __init__(self):
        self.rng = np.random.default_rng(self.p.seed)

    def next(self):
        if self.rng.uniform() < self.p.p_flip:
            self.order_target_percent(target=int(self.rng.integers(-1, 2)) * self.p.stake)


class Side(bt.Strategy):
    """Always in the market on one side; raises mid-run when told to."""
    params = dict(side=1, stake=0.9, explode=False)

    def next(self):
        if self.p.explode and len(self) > 10:
            raise RuntimeError("planted failure")
        if not self.position:
            self.order_target_percent(target=self.p.side * self.p.stake)
'''

TIMING = ["seconds", "bars_per_s", "node"]


def write_inputs(d: Path, n: int = 1500, seed: int = 3) -> tuple[Path, Path]:
    d.mkdir(parents=True, exist_ok=True)
    (d / "strats.py").write_text(STRATEGIES)
    gapping_candles(n, seed=seed).to_csv(d / "candles.csv", index=False)
    return d / "candles.csv", d / "strats.py"


def results_only(df: pd.DataFrame) -> pd.DataFrame:
    """The table without what measures speed or place (differs between runs and backends)."""
    return df.drop(columns=[c for c in TIMING if c in df]).reset_index(drop=True)


def listening_sockets() -> list[tuple[str, int, int]]:
    """(address, port, inode) of every listening TCP socket, IPv4 and IPv6, from /proc/net."""
    import ipaddress

    out = []
    for path, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        try:
            lines = Path(path).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[3] != "0A":  # TCP_LISTEN
                continue
            hexip, hexport = f[1].split(":")
            raw = bytes.fromhex(hexip)
            # the kernel prints each 32-bit word in host (little-endian) order
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            ip = ipaddress.ip_address(raw)
            out.append((str(ip), int(hexport, 16), int(f[9])))
    return out


def is_loopback(ip: str) -> bool:
    import ipaddress

    a = ipaddress.ip_address(ip)
    if getattr(a, "ipv4_mapped", None) is not None:
        a = a.ipv4_mapped
    return a.is_loopback


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    kids = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(p.name))
    out, i = [pid], 0
    while i < len(out):
        out += kids.get(out[i], [])
        i += 1
    return out


def socket_inodes(pid: int) -> set[int]:
    out = set()
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return out
    for fd in fds:
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(int(target[8:-1]))
    return out
