"""The ``ainode`` command line: ``ainode serve`` and the admin and evaluation commands."""
