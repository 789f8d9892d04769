"""Fleet learning: machines of one class learn from each other's baselines, never their data.

:mod:`~edge_agent.fleet.document` (signed prior and update documents),
:mod:`~edge_agent.fleet.keys` (the fleet's Ed25519 key pair),
:mod:`~edge_agent.fleet.aggregate` (robust aggregation of member summaries),
:mod:`~edge_agent.fleet.privacy` (clip + Gaussian noise and its accountant),
:mod:`~edge_agent.fleet.command` (``edge-agent fleet ...``).
"""
