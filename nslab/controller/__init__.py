"""The kit's OpenFlow controller side: a runner for os-ken/Ryu apps
(`start_controller`, `python -m nslab.controller`) and the fabric helpers
apps use on looped topologies (`nslab.controller.fabric`)."""

from nslab.controller.runner import free_port, resolve_app, start_controller

__all__ = ["free_port", "resolve_app", "start_controller"]
