"""Routing rules: declarative conditions on a series header and its sender.

A rule's ``match`` mapping is parsed once into :class:`Condition` objects
(no ``eval``). Keys are DICOM keywords (``Modality``, ``ImageType``...),
``calling_ae``/``called_ae`` (the sender's association), or the combinators
``any``, ``all`` and ``not``. A value is either a literal (equality; a list
means "one of") or a mapping of operators that must all hold:

``equals``, ``regex``, ``in``, ``range: [low, high]`` (inclusive), ``lt``,
``le``, ``gt``, ``ge``, ``contains`` (for multi-valued tags such as
ImageType), ``exists``, ``not``.

Every rule whose conditions hold fires: one series can start several jobs
(e.g. a lung routine and a body-composition routine on the same chest CT).

``SOPClassUID`` values may be written as SOP class keywords
(``DigitalMammographyXRayImageStorageForPresentation``) or UIDs; keywords are
turned into UIDs when the rule is parsed, and a misspelt one is refused.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from pydicom.datadict import keyword_dict
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName

from node.contract.image_attributes import sop_class_uid

SENDER_KEYS = ("calling_ae", "called_ae")
COMBINATORS = ("any", "all", "not")
OPERATORS = ("equals", "regex", "in", "range", "lt", "le", "gt", "ge", "contains", "exists", "not")
#: Keys whose values may name SOP classes by keyword; rules compare UIDs.
SOP_CLASS_KEYS = ("SOPClassUID",)


class Subject(Protocol):
    """What a rule is evaluated against: attribute values by keyword."""

    def value(self, key: str) -> Any:
        """Return the value for a DICOM keyword or sender key, ``None`` when absent."""
        ...


def normalise(value: Any) -> Any:
    """Turn pydicom values into plain Python values (str, float, int, list)."""
    if value is None:
        return None
    if isinstance(value, MultiValue | list | tuple):
        return [normalise(v) for v in value]
    if isinstance(value, PersonName):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("ascii", "replace").strip()
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return value


@dataclass(frozen=True)
class HeaderSubject:
    """A series header (one representative instance) plus association details."""

    dataset: Dataset
    calling_ae: str = ""
    called_ae: str = ""

    def value(self, key: str) -> Any:
        if key == "calling_ae":
            return self.calling_ae.strip()
        if key == "called_ae":
            return self.called_ae.strip()
        element = self.dataset.get(key)
        if element is None or element == "":
            return None
        return normalise(element)


@dataclass(frozen=True)
class MappingSubject:
    """A header given as plain JSON-like mapping (keyword → value)."""

    values: Mapping[str, Any]

    def value(self, key: str) -> Any:
        return normalise(self.values.get(key))


class Condition(Protocol):
    def matches(self, subject: Subject) -> bool: ...

    def describe(self) -> str: ...


@dataclass(frozen=True)
class AttributeCondition:
    """One attribute tested by one predicate."""

    key: str
    operator: str
    operand: Any
    predicate: Callable[[Any], bool]

    def matches(self, subject: Subject) -> bool:
        return self.predicate(subject.value(self.key))

    def describe(self) -> str:
        return f"{self.key} {self.operator} {self.operand!r}"


@dataclass(frozen=True)
class AllOf:
    conditions: tuple[Condition, ...]

    def matches(self, subject: Subject) -> bool:
        return all(c.matches(subject) for c in self.conditions)

    def describe(self) -> str:
        return "all(" + ", ".join(c.describe() for c in self.conditions) + ")"


@dataclass(frozen=True)
class AnyOf:
    conditions: tuple[Condition, ...]

    def matches(self, subject: Subject) -> bool:
        return any(c.matches(subject) for c in self.conditions)

    def describe(self) -> str:
        return "any(" + ", ".join(c.describe() for c in self.conditions) + ")"


@dataclass(frozen=True)
class Not:
    condition: Condition

    def matches(self, subject: Subject) -> bool:
        return not self.condition.matches(subject)

    def describe(self) -> str:
        return f"not({self.condition.describe()})"


def _values(actual: Any) -> list[Any]:
    if actual is None:
        return []
    return actual if isinstance(actual, list) else [actual]


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{where}: expected a number, got {value!r}")
    return float(value)


def _as_float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _equal(actual: Any, expected: Any) -> bool:
    if isinstance(expected, bool):
        return actual == expected
    if isinstance(expected, int | float):
        return any(_as_float(v) == float(expected) for v in _values(actual))
    if isinstance(actual, list):
        return [str(v) for v in actual] == [str(v) for v in _values(expected)] or (
            len(actual) == 1 and str(actual[0]) == str(expected)
        )
    return actual is not None and str(actual) == str(expected)


def _compare(bound: float, test: Callable[[float, float], bool]) -> Callable[[Any], bool]:
    def predicate(actual: Any) -> bool:
        numbers = [_as_float(v) for v in _values(actual)]
        return bool(numbers) and all(n is not None and test(n, bound) for n in numbers)

    return predicate


def _operator_condition(key: str, operator: str, operand: Any, where: str) -> Condition:
    if operator == "not":
        return Not(_attribute_condition(key, operand, f"{where}.not"))
    if operator == "equals":
        expected = operand
        return AttributeCondition(key, operator, operand, lambda a: _equal(a, expected))
    if operator == "regex":
        if not isinstance(operand, str):
            raise ValueError(f"{where}.regex: expected a string pattern")
        try:
            pattern = re.compile(operand)
        except re.error as exc:
            raise ValueError(f"{where}.regex: invalid regular expression: {exc}") from None
        return AttributeCondition(
            key,
            operator,
            operand,
            lambda a: any(pattern.search(str(v)) for v in _values(a)),
        )
    if operator == "in":
        if not isinstance(operand, list) or not operand:
            raise ValueError(f"{where}.in: expected a non-empty list")
        return AttributeCondition(
            key, operator, operand, lambda a: any(_equal(a, option) for option in operand)
        )
    if operator == "contains":
        wanted = [str(v).upper() for v in (operand if isinstance(operand, list) else [operand])]
        return AttributeCondition(
            key,
            operator,
            operand,
            lambda a: all(w in [str(v).upper() for v in _values(a)] for w in wanted),
        )
    if operator == "exists":
        if not isinstance(operand, bool):
            raise ValueError(f"{where}.exists: expected true or false")
        return AttributeCondition(key, operator, operand, lambda a: (a is not None) == operand)
    if operator == "range":
        if not isinstance(operand, list) or len(operand) != 2:
            raise ValueError(f"{where}.range: expected [low, high]")
        low, high = (
            _number(operand[0], f"{where}.range[0]"),
            _number(operand[1], f"{where}.range[1]"),
        )
        if low > high:
            raise ValueError(f"{where}.range: low {low} is above high {high}")
        return AllOf(
            (
                AttributeCondition(key, "ge", low, _compare(low, lambda n, b: n >= b)),
                AttributeCondition(key, "le", high, _compare(high, lambda n, b: n <= b)),
            )
        )
    comparisons: dict[str, Callable[[float, float], bool]] = {
        "lt": lambda n, b: n < b,
        "le": lambda n, b: n <= b,
        "gt": lambda n, b: n > b,
        "ge": lambda n, b: n >= b,
    }
    if operator in comparisons:
        bound = _number(operand, f"{where}.{operator}")
        return AttributeCondition(key, operator, bound, _compare(bound, comparisons[operator]))
    raise ValueError(f"{where}: unknown operator {operator!r} (known: {', '.join(OPERATORS)})")


def _attribute_condition(key: str, spec: Any, where: str) -> Condition:
    if isinstance(spec, Mapping):
        if not spec:
            raise ValueError(f"{where}: empty operator mapping")
        parts = [_operator_condition(key, str(op), operand, where) for op, operand in spec.items()]
        return parts[0] if len(parts) == 1 else AllOf(tuple(parts))
    if isinstance(spec, list):
        return _operator_condition(key, "in", spec, where)
    return _operator_condition(key, "equals", spec, where)


def _sop_class_operand(spec: Any, where: str) -> Any:
    """A rule value for a SOP class key with keywords replaced by their UIDs."""
    if isinstance(spec, Mapping):
        return {
            op: _sop_class_operand(value, f"{where}.{op}")
            if op in ("equals", "in", "not")
            else value
            for op, value in spec.items()
        }
    if isinstance(spec, list):
        return [_sop_class_operand(value, where) for value in spec]
    if isinstance(spec, str):
        try:
            return sop_class_uid(spec)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
    return spec


def _parse(spec: Any, where: str) -> list[Condition]:
    if not isinstance(spec, Mapping):
        raise ValueError(f"{where}: expected a mapping of conditions")
    conditions: list[Condition] = []
    for raw_key, value in spec.items():
        key = str(raw_key)
        path = f"{where}.{key}"
        if key in ("any", "all"):
            if not isinstance(value, list) or not value:
                raise ValueError(f"{path}: expected a non-empty list of condition mappings")
            children = tuple(
                AllOf(tuple(_parse(item, f"{path}[{i}]"))) for i, item in enumerate(value)
            )
            conditions.append(AnyOf(children) if key == "any" else AllOf(children))
        elif key == "not":
            conditions.append(Not(AllOf(tuple(_parse(value, path)))))
        elif key in SENDER_KEYS or key in keyword_dict:
            if key in SOP_CLASS_KEYS:
                value = _sop_class_operand(value, path)
            conditions.append(_attribute_condition(key, value, path))
        else:
            raise ValueError(
                f"{path}: {key!r} is not a DICOM keyword, a sender key "
                f"({', '.join(SENDER_KEYS)}) or a combinator ({', '.join(COMBINATORS)})"
            )
    return conditions


def parse_conditions(match: Mapping[str, Any]) -> list[Condition]:
    """Parse a rule's ``match`` mapping; raise ``ValueError`` naming the key path."""
    return _parse(match, "match")


@dataclass(frozen=True)
class RuleMatch:
    """The outcome of evaluating one rule."""

    rule: str
    matched: bool
    failed: tuple[str, ...]


def evaluate(name: str, conditions: Sequence[Condition], subject: Subject) -> RuleMatch:
    """Evaluate a rule and say which of its conditions did not hold."""
    failed = tuple(c.describe() for c in conditions if not c.matches(subject))
    return RuleMatch(rule=name, matched=not failed, failed=failed)


class RoutableRule(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def enabled(self) -> bool: ...

    @property
    def conditions(self) -> list[Condition]: ...


R = TypeVar("R", bound=RoutableRule)


def matching_rules(rules: Iterable[R], subject: Subject) -> list[R]:
    """All enabled rules whose conditions hold, in configuration order."""
    return [
        rule for rule in rules if rule.enabled and all(c.matches(subject) for c in rule.conditions)
    ]
