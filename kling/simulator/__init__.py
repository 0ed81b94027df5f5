"""A faithful local Kling server for tests, benchmarks and the demo (see docs/simulator.md)."""

from kling.simulator.config import SimulatorConfig
from kling.simulator.dispatch import CallbackDelivery
from kling.simulator.remote import SimulatorRemote
from kling.simulator.server import Simulator

__all__ = ["CallbackDelivery", "Simulator", "SimulatorConfig", "SimulatorRemote"]
