"""The default long/short rule with signals computed bar by bar inside Backtrader.

Equivalent to ``--stream``: the model runs in ``ModelSignal.next()`` on the
bars seen so far. Slower than the precomputed pass, and equal to it: the
tests check that the two give the same signals.
"""

from fastrader.strategy import ModelStrategy


class Strategy(ModelStrategy):
    params = dict(stream=True)
