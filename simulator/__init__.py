"""A simulated town of residents and devices that talks to CareCall over MQTT and HTTP only
(docs/simulator.md)."""

from simulator.simulation import Simulation

__all__ = ["Simulation"]
