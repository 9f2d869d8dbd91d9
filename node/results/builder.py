"""What a result kind's builder is: the seam between :func:`build_results` and one kind.

Adding a kind means one builder module (in the family package of its IOD, e.g.
``node/results/sc/builders.py``) and one entry in :data:`node.results.table.BUILDERS`.
A builder says which series it fills (number, label), whether a prediction can fill
it (:meth:`ResultBuilder.missing_input`, which the worker uses to leave a kind out
with a job event) and builds its objects from a :class:`BuildContext`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from pydicom.dataset import Dataset

from node.contract.plugin import Prediction
from node.contract.template import ResultTemplate
from node.contract.volume import Volume
from node.results.analysis import Analysis
from node.results.findings import ImageFindings
from node.results.identity import SeriesIdentity
from node.results.reference import SOPReference
from node.results.uids import ResultUIDs


@dataclass(frozen=True)
class BuildContext:
    """Everything one prediction's builders share, made once by :func:`build_results`.

    Attributes
    ----------
    volume
        The source series, with headers the builders can use
        (:func:`node.results.source.buildable_volume`).
    prediction, template, uids, revision
        The routine's output, its result template, the deterministic UIDs of this
        input, and the result revision (1 for the first).
    analysis
        The checked segmentation, or None without a label map (or for a
        registration-only build).
    findings
        Classifications and detections per image, or None for a registration-only build.
    tracking_uids
        ``{label value: Tracking UID}`` shared by SEG, SR and GSPS.
    predecessors
        ``{SR tag: the SR it supersedes}``.
    objects
        What was built so far, by tag (an SR references its SEG, a KO lists the rest).
    """

    volume: Volume
    prediction: Prediction
    template: ResultTemplate
    uids: ResultUIDs
    revision: int
    analysis: Analysis | None
    findings: ImageFindings | None
    tracking_uids: dict[int, str] = field(default_factory=dict)
    predecessors: dict[str, SOPReference] = field(default_factory=dict)
    objects: dict[str, list[Dataset]] = field(default_factory=dict)

    @property
    def segmented(self) -> bool:
        return self.prediction.label_map is not None


@runtime_checkable
class ResultBuilder(Protocol):
    """How one result kind is built.

    Attributes
    ----------
    kind
        The kind (a :class:`node.contract.kinds.ResultKind` value); a file tag is the
        kind, optionally with a ``.<qualifier>`` the builder reads (``sr.fractional_seg``).
    series_number
        Series Number of the kind's series.
    label
        What follows the template's series description (``"AI lungs SEG"``).
    """

    @property
    def kind(self) -> str: ...

    @property
    def series_number(self) -> int: ...

    @property
    def label(self) -> str: ...

    def missing_input(self, prediction: Prediction) -> str | None:
        """Why ``prediction`` cannot fill this kind, or None when it can."""
        ...

    def series_instance_uid(self, context: BuildContext, tag: str) -> str:
        """Series Instance UID of the series of ``tag``."""
        ...

    def build(
        self, context: BuildContext, tag: str, series: SeriesIdentity
    ) -> list[Dataset] | None:
        """The objects of ``tag``; None when there is nothing to build (a KO with nothing
        to list)."""
        ...


class KindBuilder:
    """Defaults for a builder: the input-derived series UID, and fillable by any prediction."""

    kind: str
    series_number: int
    label: str

    def missing_input(self, prediction: Prediction) -> str | None:
        return None

    def series_instance_uid(self, context: BuildContext, tag: str) -> str:
        return context.uids.series_uid(tag)


def missing_findings(prediction: Prediction) -> str | None:
    """Why SR, GSPS and SC cannot be filled: they draw on a label map or on findings."""
    if (
        prediction.label_map is None
        and not prediction.classifications
        and not prediction.detections
    ):
        return "the plugin gives no label map, classifications or detections"
    return None


class BuilderTable:
    """Builders by kind, in build order (an SR needs its SEG, a KO everything else)."""

    def __init__(self, builders: Iterable[ResultBuilder]) -> None:
        self._builders: dict[str, ResultBuilder] = {}
        for builder in builders:
            if builder.kind in self._builders:
                raise ValueError(f"result kind {str(builder.kind)!r} has two builders")
            self._builders[builder.kind] = builder

    def __iter__(self) -> Iterator[ResultBuilder]:
        return iter(self._builders.values())

    def __len__(self) -> int:
        return len(self._builders)

    def __contains__(self, kind: object) -> bool:
        return kind in self._builders

    def __getitem__(self, kind: str) -> ResultBuilder:
        return self._builders[kind]

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self._builders)

    def of_tag(self, tag: str) -> ResultBuilder:
        """The builder of a file tag (``sr.fractional_seg`` is built by the ``sr`` builder)."""
        kind = kind_of(tag)
        if kind not in self._builders:
            known = ", ".join(self._builders)
            raise ValueError(f"unknown result kind {kind!r} (known: {known})")
        return self._builders[kind]

    def ordered(self, tags: Iterable[str]) -> list[str]:
        """``tags`` once each, in build order."""
        order = {kind: index for index, kind in enumerate(self._builders)}
        return sorted(set(tags), key=lambda tag: (order[self.of_tag(tag).kind], tag))

    def with_builder(self, builder: ResultBuilder, *, before: str) -> BuilderTable:
        """A new table with ``builder`` inserted before kind ``before``."""
        builders = list(self._builders.values())
        index = [b.kind for b in builders].index(before)
        return BuilderTable([*builders[:index], builder, *builders[index:]])


def kind_of(tag: str) -> str:
    """The kind part of a file tag."""
    return tag.partition(".")[0]
