"""The one place that decides which result kinds a job builds.

A job asks for the file tags (:mod:`node.contract.kinds`) its destinations' result
profiles list (the default SEG + SR profile without any). What is built is that request
less what the routine's prediction cannot fill, and plus what a prediction brings that
no profile names:

* no label map (a classifier or detector): no SEG of any kind; the SR references none;
* no probabilities: no FRACTIONAL SEG (nor the SR and KO that reference it);
* a registration is always built (``reg``); without a label map it is the only result;
* no attribution map (``pmap``, ``heatmap_sc``), no derived image (``derived``,
  ``derived_sc``), nothing to report (SR, GSPS, SC): those kinds are dropped;
* a job kept on the node (no destinations) that is left with nothing keeps the derived
  series and Parametric Map the routine gives.

:meth:`ResultPlan.resolve` returns the tags to build and each dropped tag with its
reason (the worker records them as ``results_skipped`` job events);
:func:`buildable_tags` is the same policy for a direct call of
:func:`~node.results.build.build_results`. The plan holds only strings, so it travels
inside a job's input to any executor.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from node.contract.kinds import (
    DEFAULT_PROFILE,
    SEG_KINDS,
    ResultKind,
    profile_tags,
    required_tags,
    tag_kind,
)
from node.contract.plugin import Prediction
from node.errors import InputRejected, TemplateError

log = logging.getLogger(__name__)

#: What a job without destinations keeps when its profile gives nothing.
_KEPT_ON_NODE = (ResultKind.DERIVED.value, ResultKind.PMAP.value)
#: The notice of a REG built that no destination of the job takes.
REG_NOT_SENT = "reg is built but no destination of this job lists 'reg' in its results"


def missing_input(prediction: Prediction, kind: ResultKind) -> str | None:
    """Why ``prediction`` cannot fill ``kind``, or None when it can: the kind's builder
    says (:meth:`node.results.builder.ResultBuilder.missing_input`)."""
    from node.results.table import BUILDERS  # the builders import highdicom: not at start-up

    return BUILDERS[kind].missing_input(prediction)


def unavailable_tags(prediction: Prediction, tags: Iterable[str]) -> dict[str, str]:
    """``{tag: reason}`` for the tags ``prediction`` cannot fill.

    A KO is never dropped here: it lists what was built (none built: no KO).
    """
    reasons: dict[str, str] = {}
    for tag in set(tags):
        kind = tag_kind(tag)
        if kind is ResultKind.KO:
            continue
        reason = missing_input(prediction, kind)
        if reason is not None:
            reasons[tag] = reason
    return reasons


@dataclass(frozen=True)
class Dropped:
    """Tags left out of a job's results, with why (one ``results_skipped`` event)."""

    reasons: dict[str, str]
    #: Short reason for the log line (``no_label_map``...).
    log_reason: str
    level: int = logging.INFO

    def detail(self) -> str:
        """``"seg,sr: why; pmap: other why"``: the tags named with each reason."""
        by_reason: dict[str, list[str]] = {}
        for tag, why in sorted(self.reasons.items()):
            by_reason.setdefault(why, []).append(tag)
        return "; ".join(f"{','.join(named)}: {why}" for why, named in by_reason.items())


@dataclass(frozen=True)
class Resolved:
    """What one prediction gives: the tags to build and what was left out, in order."""

    tags: frozenset[str]
    dropped: tuple[Dropped, ...] = ()
    #: Notices for the job's timeline that drop nothing (a REG no destination takes).
    notices: tuple[str, ...] = ()


@dataclass(frozen=True)
class ResultPlan:
    """The result kinds a job asks for, and which destination takes which.

    Attributes
    ----------
    destinations
        The job's destination names, in order (also those no longer configured).
    profiles
        File tags per configured destination of the job.
    """

    destinations: tuple[str, ...] = ()
    profiles: dict[str, frozenset[str]] = field(default_factory=dict)

    @classmethod
    def for_job(
        cls, destinations: Iterable[str], profiles: Mapping[str, frozenset[str]]
    ) -> ResultPlan:
        """The plan of a job sent to ``destinations``; ``profiles`` maps every configured
        destination to the file tags of its result profile."""
        names = tuple(destinations)
        return cls(names, {name: frozenset(profiles[name]) for name in names if name in profiles})

    @property
    def requested(self) -> frozenset[str]:
        """Union of the destinations' tags; SEG + SR without any."""
        tags: set[str] = set()
        for profile in self.profiles.values():
            tags |= profile
        return frozenset(tags) if tags else profile_tags(DEFAULT_PROFILE)

    def destinations_of(self, tag: str) -> tuple[str, ...]:
        """The destinations whose profile takes the file tag ``tag``."""
        return tuple(name for name, tags in self.profiles.items() if tag in tags)

    def resolve(self, prediction: Prediction) -> Resolved:
        """The tags to build from ``prediction`` (see the module doc).

        Raises
        ------
        node.errors.InputRejected
            Nothing is left to build.
        """
        tags = self.requested
        dropped: list[Dropped] = []
        notices: list[str] = []

        def drop(reasons: Mapping[str, str], log_reason: str, level: int = logging.INFO) -> None:
            nonlocal tags
            if reasons:
                dropped.append(Dropped(dict(reasons), log_reason, level))
                tags = frozenset(tags - set(reasons))

        if prediction.label_map is None:
            # A classifier or detector: no SEG of any kind; the SR references none.
            why = "the routine gives no label map"
            drop({t: why for t in tags if tag_kind(t) in SEG_KINDS}, "no_label_map")
        elif prediction.probabilities is None:
            # A FRACTIONAL SEG, the SR that references it and a KO that lists it.
            why = "the plugin gives no probabilities"
            fractional = {t: why for t in tags if ResultKind.FRACTIONAL_SEG.value in t}
            drop(fractional, "no_probabilities", logging.WARNING)
        reg = ResultKind.REG.value
        if prediction.registration is None:
            if reg in tags:
                drop({reg: "the plugin gives no registration"}, "no_registration")
        elif prediction.label_map is not None:
            tags = frozenset(tags | {reg})
        else:  # a registration alone: the REG is built even when no profile lists it
            if reg not in tags and self.destinations:
                notices.append(REG_NOT_SENT)
            tags = frozenset({reg})
        drop(unavailable_tags(prediction, tags), "not_in_prediction")
        if not tags and not self.destinations:
            kept = profile_tags(_KEPT_ON_NODE)
            tags = frozenset(kept - set(unavailable_tags(prediction, kept)))
        if not tags:
            raise InputRejected(
                "the plugin's prediction fills none of the result kinds its destinations take"
            )
        return Resolved(tags, tuple(dropped), tuple(notices))


def buildable_tags(
    prediction: Prediction, tags: Iterable[str] | None, template: str
) -> frozenset[str]:
    """The tags :func:`~node.results.build.build_results` builds for ``tags``: what they
    need too (an SR its SEG); SEG + SR by default, the SR alone without a label map.

    Raises
    ------
    TemplateError
        A SEG kind asked for a prediction without a label map (a job's plan leaves them
        out with an event instead).
    """
    segmented = prediction.label_map is not None
    if tags is None:
        tags = profile_tags(DEFAULT_PROFILE) if segmented else frozenset({ResultKind.SR.value})
    tags = frozenset(tags)
    seg_kinds = {kind.value for kind in SEG_KINDS}
    if not segmented:
        asked = sorted(tag for tag in tags if tag.partition(".")[0] in seg_kinds)
        if asked:
            raise TemplateError(
                f"template {template}: the routine gives no label map, so no "
                f"{', '.join(asked)} can be built (leave SEG kinds out of the profile)"
            )
    wanted = set(required_tags(tags))
    if not segmented:
        wanted = {tag for tag in wanted if tag.partition(".")[0] not in seg_kinds}
    if prediction.registration is None and ResultKind.REG.value in wanted:
        # Only a routine that registers a prior gives a Spatial Registration.
        log.info("result kind reg skipped: the prediction has no registration")
        wanted.discard(ResultKind.REG.value)
    return frozenset(wanted)
