"""``ainode users|rules|jobs|series|destinations|pull|pulls|sources|audit``: thin command-line
wrappers over :class:`AdminService`, one module per command group.

They open the node's state database under the configuration's ``data_dir``
(the same file a running node uses; SQLite's WAL mode lets both work at once).
Changes are audited as ``cli:<login name>``.
"""

from __future__ import annotations

from typing import Any

from node.cli.admin import audit, destinations, jobs, rules, users


def add_commands(commands: Any) -> None:
    """Register the admin command groups on the main parser."""
    for group in (users, rules, jobs, destinations, audit):
        group.add_commands(commands)
