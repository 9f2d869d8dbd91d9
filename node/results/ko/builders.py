"""Table entry of the Key Object Selection (``ko.<tag>+<tag>…`` lists those tags' objects)."""

from __future__ import annotations

import logging

from pydicom.dataset import Dataset

from node.contract.kinds import ResultKind
from node.results.builder import BuildContext, KindBuilder
from node.results.identity import SeriesIdentity
from node.results.ko.selection import build_ko

log = logging.getLogger(__name__)


class KoBuilder(KindBuilder):
    """Lists what was built of the tags it names; never left out before building."""

    kind = ResultKind.KO
    series_number = 9007
    label = "KO"

    def build(
        self, context: BuildContext, tag: str, series: SeriesIdentity
    ) -> list[Dataset] | None:
        listed = [d for t in tag.partition(".")[2].split("+") for d in context.objects.get(t, [])]
        if not listed:
            log.warning("nothing to list, no KO built tag=%s", tag)
            return None
        return [
            build_ko(
                context.template,
                listed,
                series=series,
                sop_instance_uid=context.uids.instance_uid(tag),
            )
        ]


KO = KoBuilder()
