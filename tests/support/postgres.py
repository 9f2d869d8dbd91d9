"""PostgreSQL for the state tests: the server (:mod:`tools.postgres`), started once per
test session by tests/conftest.py, and what either backend raises on a broken constraint."""

from __future__ import annotations

import sqlite3

import psycopg

from tools.postgres import PostgresServer, bin_dir

#: What a broken constraint (e.g. an append-only trigger) raises on either backend.
INTEGRITY_ERRORS = (sqlite3.IntegrityError, psycopg.IntegrityError)

__all__ = ["INTEGRITY_ERRORS", "PostgresServer", "bin_dir"]
