"""Free ports and polling helpers for tests (re-exported from :mod:`tools.net`)."""

from tools.net import free_port, free_ports, http_ok, port_is_free, tail, wait_until

__all__ = ["free_port", "free_ports", "http_ok", "port_is_free", "tail", "wait_until"]
