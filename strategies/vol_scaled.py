"""Size the position by signal strength instead of all-in/all-out."""

from fastrader.strategy import ModelStrategy


class Strategy(ModelStrategy):
    params = dict(
        full_at=2.0,  # signal at which the position is full size
        rebalance_band=0.25,  # ignore target changes smaller than this (saves fees)
    )

    def target(self, signal):
        x = signal / self.p.full_at
        if not self.p.allow_short:
            x = max(x, 0.0)
        return max(-1.0, min(1.0, x))
