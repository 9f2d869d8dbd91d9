import pytest
from pydicom.dataset import Dataset

from node.config import RuleSettings
from node.routing import HeaderSubject, MappingSubject, evaluate, matching_rules, parse_conditions


def header(**values) -> HeaderSubject:
    ds = Dataset()
    ds.Modality = "CT"
    ds.SeriesDescription = "Thorax 1.0 B31f"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SliceThickness = "1.0"
    ds.BodyPartExamined = "CHEST"
    for key, value in values.items():
        setattr(ds, key, value)
    return HeaderSubject(ds, calling_ae="CT_SCANNER_1", called_ae="AINODE")


def holds(match, subject=None) -> bool:
    conditions = parse_conditions(match)
    subject = subject or header()
    return all(c.matches(subject) for c in conditions)


@pytest.mark.parametrize(
    ("match", "expected"),
    [
        ({"Modality": "CT"}, True),
        ({"Modality": "MR"}, False),
        ({"Modality": {"equals": "CT"}}, True),
        ({"Modality": {"equals": "MR"}}, False),
        ({"SliceThickness": {"equals": 1}}, True),
        ({"Modality": ["MR", "CT"]}, True),
        ({"Modality": {"in": ["MR", "PT"]}}, False),
        ({"SeriesDescription": {"regex": "(?i)chest|thorax"}}, True),
        ({"SeriesDescription": {"regex": "^chest"}}, False),
        ({"SliceThickness": {"range": [0.5, 1.5]}}, True),
        ({"SliceThickness": {"range": [2, 5]}}, False),
        ({"SliceThickness": {"lt": 2}}, True),
        ({"SliceThickness": {"gt": 2}}, False),
        ({"SliceThickness": {"le": 1.0, "ge": 1.0}}, True),
        ({"ImageType": {"contains": "AXIAL"}}, True),
        ({"ImageType": {"contains": ["PRIMARY", "LOCALIZER"]}}, False),
        ({"ImageType": {"not": {"contains": "LOCALIZER"}}}, True),
        ({"not": {"Modality": "CT"}}, False),
        ({"any": [{"Modality": "MR"}, {"BodyPartExamined": "CHEST"}]}, True),
        ({"all": [{"Modality": "CT"}, {"BodyPartExamined": "HEAD"}]}, False),
        ({"calling_ae": "CT_SCANNER_1"}, True),
        ({"calling_ae": {"regex": "^MR_"}}, False),
        ({"called_ae": "AINODE"}, True),
        ({"ContrastBolusAgent": {"exists": False}}, True),
        ({"ContrastBolusAgent": {"exists": True}}, False),
        ({"ContrastBolusAgent": "IODINE"}, False),
        ({"SliceThickness": 1}, True),
    ],
)
def test_operators(match, expected):
    assert holds(match) is expected


@pytest.mark.parametrize(
    ("match", "message"),
    [
        ({"Modalty": "CT"}, "match.Modalty"),
        ({"Modality": {"regexp": "CT"}}, "unknown operator 'regexp'"),
        ({"SeriesDescription": {"regex": "("}}, "invalid regular expression"),
        ({"SliceThickness": {"range": [5, 1]}}, "low 5.0 is above high 1.0"),
        ({"SliceThickness": {"lt": "two"}}, "expected a number"),
        ({"any": []}, "match.any: expected a non-empty list"),
        ({"any": [{"Nope": 1}]}, r"match.any[0].Nope"),
    ],
)
def test_bad_conditions_name_the_path(match, message):
    with pytest.raises(ValueError) as caught:
        parse_conditions(match)
    assert message in str(caught.value)


def test_all_matching_rules_fire_in_order_and_disabled_rules_do_not():
    rules = [
        RuleSettings(name="lungs", match={"Modality": "CT"}, plugin="ct_lungs"),
        RuleSettings(name="mr-only", match={"Modality": "MR"}, plugin="ct_lungs"),
        RuleSettings(name="body", match={"BodyPartExamined": "CHEST"}, plugin="ct_lungs"),
        RuleSettings(name="off", match={}, plugin="ct_lungs", enabled=False),
    ]
    assert [r.name for r in matching_rules(rules, header())] == ["lungs", "body"]


def test_evaluate_explains_failures():
    outcome = evaluate(
        "r", parse_conditions({"Modality": "MR", "BodyPartExamined": "CHEST"}), header()
    )
    assert not outcome.matched
    assert outcome.failed == ("Modality equals 'MR'",)


def test_json_header_subject():
    subject = MappingSubject({"Modality": "CT", "ImageType": ["DERIVED", "SECONDARY"]})
    assert holds({"ImageType": {"contains": "derived"}}, subject)
    assert not holds({"Modality": "MR"}, subject)
