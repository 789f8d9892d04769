"""edge-agent: predictive maintenance on the plant gateway.

Vibration frames go in, FFT features are extracted (:mod:`edge_agent.signal`),
each machine's healthy baseline is learned online (:mod:`edge_agent.models`) and
alerts leave only over MQTT.
"""

__version__ = "0.1.0"
