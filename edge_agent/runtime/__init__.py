"""The runtime: frames become windows, features, verdicts and alerts; state is kept.

Nothing here speaks MQTT: :mod:`edge_agent.mqtt` connects an
:class:`~edge_agent.runtime.agent.Agent` to a broker. Imports go one way:
:mod:`edge_agent.signal` ← :mod:`edge_agent.models` ← runtime ← :mod:`edge_agent.mqtt`.
"""
