"""Rolling-element bearing defect frequencies.

A localised defect is struck once per pass of a rolling element, so each defect
location repeats at its own multiple ("order") of the shaft frequency: BPFO (outer
race), BPFI (inner race), BSF (rolling element), FTF (cage). The orders follow from
the geometry alone (Harris, *Rolling Bearing Analysis*).

>>> orders = FaultOrders.from_geometry(n_elements=9, element_d=0.3126, pitch_d=1.537)
>>> round(orders.bpfo, 4), round(orders.bpfi, 4)
(3.5848, 5.4152)
>>> {k: round(v, 1) for k, v in BEARINGS["6205-2rs"].frequencies_hz(1796).items()}
{'bpfo_hz': 107.3, 'bpfi_hz': 162.1, 'bsf_hz': 141.1, 'ftf_hz': 11.9}
"""

from __future__ import annotations

import math
from dataclasses import dataclass

FAULTS = ("bpfo", "bpfi", "bsf", "ftf")


@dataclass(frozen=True)
class FaultOrders:
    """Defect frequencies as multiples of the shaft frequency."""

    bpfo: float
    bpfi: float
    bsf: float
    ftf: float

    @classmethod
    def from_geometry(cls, n_elements: int, element_d: float, pitch_d: float,
                      contact_angle_deg: float = 0.0) -> "FaultOrders":
        """Orders from the number of rolling elements, their diameter and the pitch
        diameter (any one length unit) and the contact angle.

        BSF here is the ball spin frequency (once per ball revolution); some
        publishers quote twice that, because a ball defect strikes both races.
        """
        if n_elements < 1 or element_d <= 0 or pitch_d <= element_d:
            raise ValueError("need n_elements >= 1 and 0 < element_d < pitch_d")
        r = element_d / pitch_d * math.cos(math.radians(contact_angle_deg))
        return cls(bpfo=n_elements / 2 * (1 - r), bpfi=n_elements / 2 * (1 + r),
                   bsf=pitch_d / (2 * element_d) * (1 - r * r), ftf=(1 - r) / 2)

    def frequencies_hz(self, rpm: float) -> dict[str, float]:
        shaft_hz = rpm / 60.0
        return {f"{name}_hz": getattr(self, name) * shaft_hz for name in FAULTS}


#: Bearings of the recordings we ship, by lowercase designation. Orders are as the
#: data's publishers state them, so alerts agree with their documentation.
BEARINGS: dict[str, FaultOrders] = {
    # CWRU drive end, SKF 6205-2RS JEM; BSF as CWRU publishes it (2 x spin).
    "6205-2rs": FaultOrders(bpfo=3.5848, bpfi=5.4152, bsf=4.7135, ftf=0.39828),
    # IMS rig, Rexnord ZA-2115 double row: 16 rollers per row, 0.331 in on a
    # 2.815 in pitch, 15.17 deg contact (Qiu et al. 2006).
    "za-2115": FaultOrders.from_geometry(16, 0.331, 2.815, 15.17),
    # FEMTO PRONOSTIA test bearing: 13 rollers of 3.5 mm on a 25.6 mm mean
    # diameter (IEEE PHM 2012 challenge details, appendix A.1).
    "pronostia": FaultOrders.from_geometry(13, 3.5, 25.6, 0.0),
}


def parse_bearing(spec: str) -> FaultOrders:
    """A bearing from a catalogue name, orders or geometry.

    Accepted forms: a name in :data:`BEARINGS` (``"6205-2RS"``); orders
    ``"bpfo=3.58,bpfi=5.42,bsf=4.71,ftf=0.40"``; geometry
    ``"n=9,d=7.94,D=39.04,angle=0"`` (element and pitch diameters in one unit).

    >>> round(parse_bearing("n=9,d=0.3126,D=1.537").bpfo, 4)
    3.5848
    """
    spec = spec.strip()
    if spec.lower() in BEARINGS:
        return BEARINGS[spec.lower()]
    try:
        items = [item.split("=", 1) for item in spec.replace(" ", "").split(",")]
        pairs = dict(item for item in items if len(item) == 2)
        if len(pairs) != len(items):
            pairs = {}
        if set(pairs) == set(FAULTS):
            return FaultOrders(**{k: float(v) for k, v in pairs.items()})
        if {"n", "d", "D"} <= set(pairs) <= {"n", "d", "D", "angle"}:
            return FaultOrders.from_geometry(int(pairs["n"]), float(pairs["d"]),
                                             float(pairs["D"]), float(pairs.get("angle", 0)))
    except ValueError as exc:
        raise ValueError(f"bearing {spec!r}: {exc}") from None
    raise ValueError(f"bearing {spec!r}: use a catalogue name ({', '.join(sorted(BEARINGS))}), "
                     "'bpfo=…,bpfi=…,bsf=…,ftf=…' (orders of shaft speed) or "
                     "'n=…,d=…,D=…[,angle=…]' (geometry)")
