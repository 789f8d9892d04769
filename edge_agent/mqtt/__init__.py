"""MQTT: the durable outbox, the paho-mqtt publisher, topics, payload codecs, and the
agent's link to the broker. Depends on :mod:`edge_agent.runtime`, never the reverse."""
