"""The agent's ``[fleet]`` table: whether and how often it shares, its privacy budget, whom
it trusts for priors. The exchange itself lives in :mod:`edge_agent.fleet` (above runtime).

A machine takes part when it has a ``class``; an agent with no classed machine
shares nothing and subscribes to nothing. See docs/fleet.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: The largest update a machine may publish (the issue's bound: updates <= 64 kB).
MAX_UPDATE_BYTES = 65536


@dataclass(frozen=True)
class FleetConfig:
    """``[fleet]`` of the agent configuration (docs/configuration.md#fleet).

    Parameters
    ----------
    trust_key : Path, optional
        The fleet's public key (``fleet.pub``): priors signed by another key are refused.
        Without it no prior is accepted (every one is refused as ``signature``).
    share : bool
        Publish this agent's member updates (a machine with a class still receives priors
        when ``false``).
    publish_every_s : float
        A machine's update is published when its baseline is fitted and a prior applied
        (see ``share_before_prior``), then at most this often.
    epsilon_budget : float
        The (ε, δ)-differential-privacy budget of a machine's shared updates, cumulative over
        its life; when the next update would exceed it, sharing stops (said in the status).
    delta : float
        The δ of the privacy guarantee.
    noise_multiplier : float
        Gaussian noise standard deviation as a multiple of one window's largest influence
        on what is shared: larger is more private and less useful.
    clip : float
        One window's contribution is clipped to this many reference units per feature (an
        L2 norm of ``clip * sqrt(features)``; :mod:`edge_agent.fleet.privacy`).
    share_before_prior : bool
        ``false`` (default): share only once a prior is applied (commissioned, or made from
        other members' updates), so every update is exactly (ε, δ)-private. ``true``: share
        a bootstrap update before the class has any prior, so that a fleet can form without
        commissioning; its guarantee is not exact, and it says so.
    max_update_bytes : int
        An update larger than this is not published (counted as ``too_large``).
    """

    trust_key: Path | None = None
    share: bool = True
    publish_every_s: float = 604800.0
    epsilon_budget: float = 10.0
    delta: float = 1e-05
    noise_multiplier: float = 4.0
    clip: float = 3.0
    share_before_prior: bool = False
    max_update_bytes: int = MAX_UPDATE_BYTES
