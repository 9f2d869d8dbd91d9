"""The node as a UPS worklist (``worklist:``): which tasks it performs."""

from __future__ import annotations

from pydantic import Field

from node.config.base import _Strict


class WorklistSettings(_Strict):
    """``tasks`` maps what a workitem asks for to a routine here.

    Keys: ``<CodingSchemeDesignator>^<CodeValue>`` or a bare code value of the Scheduled
    Workitem Code Sequence (0040,4018), or a code or meaning of the Scheduled Station Name
    Code Sequence (0040,4025). Values: a rule name (its plugin, destinations and priority) or
    a plugin name (that plugin, results kept on the node). A workitem no key maps is refused.
    """

    tasks: dict[str, str] = Field(default_factory=dict)
    #: Perform the workitems here; ``false``: the node only keeps the worklist, and other
    #: performers (e.g. another node, ``sources.<name>.worklist``) claim them.
    perform: bool = True
    #: How often the performer looks at its workitems and their jobs.
    poll_seconds: float = Field(0.5, gt=0, le=60)
