"""``rigid_registration``: rigid alignment of a prior series to the current one (REG)."""

from plugins.rigid_registration.plugin import RigidRegistrationPlugin

PLUGIN = RigidRegistrationPlugin

__all__ = ["PLUGIN", "RigidRegistrationPlugin"]
