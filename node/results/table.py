"""The table of result builders: one entry per result kind, in build order.

Adding a kind: a builder module in the family package of its IOD and an entry here
(tests/test_result_table.py checks that every :class:`ResultKind` has exactly one, in
:data:`node.contract.kinds.BUILD_ORDER`).
"""

from __future__ import annotations

from node.results.builder import BuilderTable
from node.results.derived.builders import DERIVED
from node.results.ko.builders import KO
from node.results.pm.builders import PMAP
from node.results.pr.builders import GSPS
from node.results.reg.builders import REG
from node.results.sc.builders import DERIVED_SC, HEATMAP_SC, SC
from node.results.seg.builders import FRACTIONAL_SEG, LABELMAP_SEG, SEG
from node.results.sr.builders import SR

#: Every kind's builder, in build order (an SR needs its SEG, a KO everything else).
BUILDERS = BuilderTable(
    [
        SEG,
        LABELMAP_SEG,
        FRACTIONAL_SEG,
        SR,
        GSPS,
        SC,
        REG,
        PMAP,
        HEATMAP_SC,
        DERIVED,
        DERIVED_SC,
        KO,
    ]
)
