"""How the suite runs on pytest-xdist workers (``make test``: ``pytest -n N --dist loadgroup
--no-loadscope-reorder -m "not serial"``, then ``pytest -m serial``).

The hooks here are imported into ``tests/conftest.py``. Under ``-n``:

* a test marked ``serial`` is skipped on the workers, naming its reason (it runs alone
  in the second pass);
* the tests of a module that share a module-, class- or package-scoped fixture run on
  one worker, so that fixture is built once, not once per worker; a test's own
  ``xdist_group`` mark groups it the same way;
* ``slow`` tests are handed out first, so no long end-to-end test starts last.

Why a scheduler of our own: xdist 3.8's ``loadgroup`` renames ``item._nodeid``, which
pytest 9 no longer reads, so its groups silently did nothing. Here each worker writes
the groups it collected to a file in the run's temp directory, and the controller's
scheduler reads it before handing out work. A run without ``-n`` is left as it was.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

WIDER_THAN_FUNCTION = ("module", "class", "package")
_GROUPS_KEY = "ainode_groups_file"


def shares_a_fixture(item: pytest.Item) -> bool:
    """True when ``item`` uses a fixture wider than a function but narrower than the
    session: its module's tests must run on one worker to share it."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return False
    return any(
        definitions[-1].scope in WIDER_THAN_FUNCTION
        for definitions in info.name2fixturedefs.values()
        if definitions
    )


def group_of(item: pytest.Item) -> str | None:
    """The work unit ``item`` must share with others, or None when it may run anywhere."""
    mark = item.get_closest_marker("xdist_group")
    if mark is not None:
        return str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
    if shares_a_fixture(item):
        return item.nodeid.split("::")[0]
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    workerinput: dict[str, Any] | None = getattr(config, "workerinput", None)
    if workerinput is None:  # not an xdist worker
        return
    groups: dict[str, str] = {}
    for item in items:
        serial = item.get_closest_marker("serial")
        if serial is not None:
            reason = serial.kwargs.get("reason") or (serial.args[0] if serial.args else "")
            item.add_marker(pytest.mark.skip(reason=f"serial ({reason}): run with -m serial"))
            continue
        group = group_of(item)
        if group is not None:
            groups[item.nodeid] = group
    # xdist hands out work in collection order with --no-loadscope-reorder. Stable, so
    # every worker collects the same order (xdist checks).
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
    path = workerinput.get(_GROUPS_KEY)
    if path:  # every worker writes the same; the rename makes each write whole
        partial = Path(f"{path}.{workerinput['workerid']}")
        partial.write_text(json.dumps(groups), encoding="utf-8")
        os.replace(partial, path)


@pytest.hookimpl(optionalhook=True)  # an xdist hook: no error under -p no:xdist
def pytest_configure_node(node: Any) -> None:
    """Controller: tell each worker where to write the groups it collected."""
    config = node.config
    base = config._tmp_path_factory.getbasetemp()  # what xdist gives workers as parent
    node.workerinput[_GROUPS_KEY] = str(base / "xdist-groups.json")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Controller: ``--dist loadgroup`` schedules by the groups the workers wrote."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):  # type: ignore[misc]
        """xdist's load-by-scope, one test a scope unless it belongs to a group."""

        _groups: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self._groups is None:
                path = config._tmp_path_factory.getbasetemp() / "xdist-groups.json"
                self._groups = json.loads(path.read_text(encoding="utf-8"))
            return self._groups.get(nodeid, nodeid)

    return GroupScheduling(config, log)
