"""Operating regimes by shaft speed.

Vibration depends on speed: a pump running at 1480 rpm and at 2950 rpm are two
different healthy states. Each speed cluster gets its own baseline, so a change
of speed starts (or returns to) that regime's baseline instead of alarming.
"""

from __future__ import annotations


class SpeedRegimes:
    """Assign speeds to clusters of ``±tolerance`` around the first speed seen in each.

    >>> r = SpeedRegimes(tolerance=0.07)
    >>> [r.assign(s) for s in (1800, 1750, 2950, 1830, None)]
    ['1800rpm', '1800rpm', '2950rpm', '1800rpm', 'any']
    """

    def __init__(self, tolerance: float = 0.07, max_regimes: int = 8):
        self.tolerance = tolerance
        self.max_regimes = max_regimes
        self.centres_: list[float] = []

    def assign(self, rpm: float | None) -> str:
        if rpm is None:
            return "any"
        nearest = min(self.centres_, key=lambda c: abs(rpm - c) / c, default=None)
        if nearest is not None and (abs(rpm - nearest) / nearest <= self.tolerance
                                    or len(self.centres_) >= self.max_regimes):
            return f"{nearest:.0f}rpm"
        self.centres_.append(float(rpm))
        return f"{rpm:.0f}rpm"
