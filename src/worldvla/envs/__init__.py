"""Simulators behind one small interface (:class:`Env`): Meta-World now, LIBERO through its own client.

Adapters are imported from their modules (``worldvla.envs.metaworld``), so importing this
package needs no simulator.
"""

from worldvla.envs.base import Env, Observation

__all__ = ["Env", "Observation"]
