"""How each pyradiomics feature is coded in DICOM, and its unit.

Every feature of the classes a template may ask for (``firstorder``, ``shape``,
``glcm``, ``glrlm``, ``glszm``, ``gldm``, ``ngtdm``; pyradiomics' default, non-deprecated
features) has a coded concept name and a UCUM unit here:

* **IBSI** codes (coding scheme designator ``IBSI``, the Image Biomarker
  Standardisation Initiative's feature identifiers) where pyradiomics implements the
  IBSI feature. Most are in DICOM PS3.16 (CID 7467 GLCM, CID 7475 GLRLM, CID 7476
  GLSZM, CID 7477 shape, CID 7478 intensity histogram, CID 7500 NGTDM, CID 7501
  NGLDM); their code meanings are taken from pydicom's copy of the DICOM dictionary.
  The IBSI *intensity-based statistical* features (mean, variance, percentiles...) are
  not in a DICOM context group; they keep their IBSI identifier and IBSI name
  (:data:`IBSI_OUTSIDE_DICOM`).
* a private coding scheme, :data:`PRIVATE_SCHEME` (``99AINODE``), whose code meaning is
  the pyradiomics feature name (``firstorder_Kurtosis``), for features IBSI does not
  define the same way (:data:`PRIVATE_CODES`, each with the reason).

Units: intensity features are in the image's units (HU on CT, UCUM ``[hnsf'U]``;
arbitrary units ``[arb'U]`` for other modalities); shape features in mm, mm2, mm3 or
/mm; ratios and every texture feature (computed on discretised grey levels) are
dimensionless (``1``). ``python -m node.results.radiomics_codes`` writes the full
table to ``dicom_sr_templates/RADIOMICS.md``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from pydicom.sr.codedict import Collection

#: Coding scheme designator of the IBSI feature identifiers (registered in PS3.16).
IBSI_SCHEME = "IBSI"
#: Private coding scheme of features without an IBSI equivalent.
PRIVATE_SCHEME = "99AINODE"
#: How the private scheme is described in the SR's Coding Scheme Identification Sequence.
PRIVATE_SCHEME_NAME = "ainode radiomics features (pyradiomics names)"
PRIVATE_SCHEME_ORGANIZATION = "ainode"


class UnitKind(StrEnum):
    """Dimension of a feature; :func:`ucum_unit` turns it into a UCUM code per modality."""

    INTENSITY = "intensity"
    INTENSITY_SQUARED = "intensity^2"
    INTENSITY_SQUARED_VOLUME = "intensity^2 mm3"
    LENGTH = "mm"
    AREA = "mm2"
    VOLUME = "mm3"
    PER_LENGTH = "/mm"
    NONE = "1"


_FIXED_UNITS: dict[UnitKind, tuple[str, str]] = {
    UnitKind.LENGTH: ("mm", "millimeter"),
    UnitKind.AREA: ("mm2", "square millimeter"),
    UnitKind.VOLUME: ("mm3", "cubic millimeter"),
    UnitKind.PER_LENGTH: ("/mm", "per millimeter"),
    UnitKind.NONE: ("1", "no units"),
}
#: Intensity unit (UCUM code, meaning) per modality; others use arbitrary units.
_INTENSITY_UNITS: dict[str, tuple[str, str]] = {"CT": ("[hnsf'U]", "Hounsfield unit")}
_ARBITRARY = ("[arb'U]", "arbitrary unit")


def ucum_unit(kind: UnitKind, modality: str) -> tuple[str, str]:
    """``(UCUM code, code meaning)`` of a feature of dimension ``kind`` on ``modality``."""
    if kind in _FIXED_UNITS:
        return _FIXED_UNITS[kind]
    code, meaning = _INTENSITY_UNITS.get(modality, _ARBITRARY)
    if kind is UnitKind.INTENSITY:
        return code, meaning
    if kind is UnitKind.INTENSITY_SQUARED:
        return f"{code}2", f"square {meaning}"
    return f"{code}2.mm3", f"square {meaning} cubic millimeter"


_I = UnitKind.INTENSITY
_I2 = UnitKind.INTENSITY_SQUARED
_ONE = UnitKind.NONE

#: ``{class: {pyradiomics feature: (IBSI identifier, unit)}}``.
IBSI_CODES: dict[str, dict[str, tuple[str, UnitKind]]] = {
    "firstorder": {
        "10Percentile": ("QG58", _I),
        "90Percentile": ("8DWT", _I),
        "Energy": ("N8CA", _I2),
        "Entropy": ("TLU2", _ONE),  # on the discretised histogram, log2
        "InterquartileRange": ("SALO", _I),
        "Maximum": ("84IY", _I),
        "Mean": ("Q4LE", _I),
        "MeanAbsoluteDeviation": ("4FUA", _I),
        "Median": ("Y12H", _I),
        "Minimum": ("1GSF", _I),
        "Range": ("2OJQ", _I),
        "RobustMeanAbsoluteDeviation": ("1128", _I),
        "RootMeanSquared": ("5ZWQ", _I),
        "Skewness": ("KE2A", _ONE),
        "Uniformity": ("BJ5W", _ONE),  # on the discretised histogram
        "Variance": ("ECT3", _I2),
    },
    "shape": {
        "Elongation": ("Q3CK", _ONE),
        "Flatness": ("N17B", _ONE),
        "LeastAxisLength": ("7J51", UnitKind.LENGTH),
        "MajorAxisLength": ("TDIC", UnitKind.LENGTH),
        "Maximum3DDiameter": ("L0JK", UnitKind.LENGTH),
        "MeshVolume": ("RNU0", UnitKind.VOLUME),
        "MinorAxisLength": ("P9VJ", UnitKind.LENGTH),
        "Sphericity": ("QCFX", _ONE),
        "SurfaceArea": ("C0JK", UnitKind.AREA),
        "SurfaceVolumeRatio": ("2PR5", UnitKind.PER_LENGTH),
        "VoxelVolume": ("YEKZ", UnitKind.VOLUME),
    },
    "glcm": {
        "Autocorrelation": ("QWB0", _ONE),
        "ClusterProminence": ("AE86", _ONE),
        "ClusterShade": ("7NFM", _ONE),
        "ClusterTendency": ("DG8W", _ONE),
        "Contrast": ("ACUI", _ONE),
        "Correlation": ("NI2N", _ONE),
        "DifferenceAverage": ("TF7R", _ONE),
        "DifferenceEntropy": ("NTRS", _ONE),
        "DifferenceVariance": ("D3YU", _ONE),
        "Id": ("IB1Z", _ONE),  # inverse difference
        "Idm": ("WF0Z", _ONE),  # inverse difference moment
        "Idmn": ("1QCO", _ONE),  # normalised inverse difference moment
        "Idn": ("NDRX", _ONE),  # normalised inverse difference
        "Imc1": ("R8DG", _ONE),
        "Imc2": ("JN9H", _ONE),
        "InverseVariance": ("E8JP", _ONE),
        "JointAverage": ("60VM", _ONE),
        "JointEnergy": ("8ZQL", _ONE),  # angular second moment
        "JointEntropy": ("TU9B", _ONE),
        "MaximumProbability": ("GYBY", _ONE),  # joint maximum
        "SumAverage": ("ZGXS", _ONE),
        "SumEntropy": ("P6QZ", _ONE),
        "SumSquares": ("UR99", _ONE),  # joint variance
    },
    "glrlm": {
        "GrayLevelNonUniformity": ("R5YN", _ONE),
        "GrayLevelNonUniformityNormalized": ("OVBL", _ONE),
        "GrayLevelVariance": ("8CE5", _ONE),
        "HighGrayLevelRunEmphasis": ("G3QZ", _ONE),
        "LongRunEmphasis": ("W4KF", _ONE),
        "LongRunHighGrayLevelEmphasis": ("3KUM", _ONE),
        "LongRunLowGrayLevelEmphasis": ("IVPO", _ONE),
        "LowGrayLevelRunEmphasis": ("V3SW", _ONE),
        "RunEntropy": ("HJ9O", _ONE),
        "RunLengthNonUniformity": ("W92Y", _ONE),
        "RunLengthNonUniformityNormalized": ("IC23", _ONE),
        "RunPercentage": ("9ZK5", _ONE),
        "RunVariance": ("SXLW", _ONE),
        "ShortRunEmphasis": ("22OV", _ONE),
        "ShortRunHighGrayLevelEmphasis": ("GD3A", _ONE),
        "ShortRunLowGrayLevelEmphasis": ("HTZT", _ONE),
    },
    "glszm": {
        "GrayLevelNonUniformity": ("JNSA", _ONE),
        "GrayLevelNonUniformityNormalized": ("Y1RO", _ONE),
        "GrayLevelVariance": ("BYLV", _ONE),
        "HighGrayLevelZoneEmphasis": ("5GN9", _ONE),
        "LargeAreaEmphasis": ("48P8", _ONE),
        "LargeAreaHighGrayLevelEmphasis": ("J17V", _ONE),
        "LargeAreaLowGrayLevelEmphasis": ("YH51", _ONE),
        "LowGrayLevelZoneEmphasis": ("XMSY", _ONE),
        "SizeZoneNonUniformity": ("4JP3", _ONE),
        "SizeZoneNonUniformityNormalized": ("VB3A", _ONE),
        "SmallAreaEmphasis": ("5QRC", _ONE),
        "SmallAreaHighGrayLevelEmphasis": ("HW1V", _ONE),
        "SmallAreaLowGrayLevelEmphasis": ("5RAI", _ONE),
        "ZoneEntropy": ("GU8N", _ONE),
        "ZonePercentage": ("P30P", _ONE),
        "ZoneVariance": ("3NSA", _ONE),
    },
    # pyradiomics' GLDM with alpha 0 and distance 1 is IBSI's NGLDM.
    "gldm": {
        "DependenceEntropy": ("FCBV", _ONE),
        "DependenceNonUniformity": ("Z87G", _ONE),
        "DependenceNonUniformityNormalized": ("OKJI", _ONE),
        "DependenceVariance": ("DNX2", _ONE),
        "GrayLevelNonUniformity": ("FP8K", _ONE),
        "GrayLevelVariance": ("1PFV", _ONE),
        "HighGrayLevelEmphasis": ("OAE7", _ONE),
        "LargeDependenceEmphasis": ("IMOQ", _ONE),
        "LargeDependenceHighGrayLevelEmphasis": ("9QMG", _ONE),
        "LargeDependenceLowGrayLevelEmphasis": ("NBZI", _ONE),
        "LowGrayLevelEmphasis": ("TL9H", _ONE),
        "SmallDependenceEmphasis": ("SODN", _ONE),
        "SmallDependenceHighGrayLevelEmphasis": ("JA6D", _ONE),
        "SmallDependenceLowGrayLevelEmphasis": ("EQ3F", _ONE),
    },
    "ngtdm": {
        "Busyness": ("NQ30", _ONE),
        "Coarseness": ("QCDE", _ONE),
        "Complexity": ("HDEZ", _ONE),
        "Contrast": ("65HE", _ONE),
        "Strength": ("1X9X", _ONE),
    },
}

#: IBSI intensity-based statistical features that no DICOM context group lists: the
#: IBSI identifier with the IBSI name as code meaning.
IBSI_OUTSIDE_DICOM: dict[str, str] = {
    "QG58": "10th percentile",
    "8DWT": "90th percentile",
    "N8CA": "Energy",
    "SALO": "Interquartile range",
    "84IY": "Maximum grey level",
    "Q4LE": "Mean",
    "4FUA": "Mean absolute deviation",
    "Y12H": "Median",
    "1GSF": "Minimum grey level",
    "2OJQ": "Range",
    "1128": "Robust mean absolute deviation",
    "5ZWQ": "Root mean square",
    "KE2A": "Skewness",
    "ECT3": "Variance",
}

#: ``{(class, feature): (private code value, unit, why it is not an IBSI code)}``.
PRIVATE_CODES: dict[tuple[str, str], tuple[str, UnitKind, str]] = {
    ("firstorder", "Kurtosis"): (
        "FO-KURTOSIS",
        _ONE,
        "pyradiomics reports kurtosis, IBSI (IPH6) excess kurtosis (3 less)",
    ),
    ("firstorder", "TotalEnergy"): (
        "FO-TOTALENERGY",
        UnitKind.INTENSITY_SQUARED_VOLUME,
        "energy scaled by the voxel volume: not an IBSI feature",
    ),
    ("shape", "Maximum2DDiameterColumn"): (
        "SH-MAX2DCOLUMN",
        UnitKind.LENGTH,
        "largest diameter in the row-slice plane: not an IBSI feature",
    ),
    ("shape", "Maximum2DDiameterRow"): (
        "SH-MAX2DROW",
        UnitKind.LENGTH,
        "largest diameter in the column-slice plane: not an IBSI feature",
    ),
    ("shape", "Maximum2DDiameterSlice"): (
        "SH-MAX2DSLICE",
        UnitKind.LENGTH,
        "largest diameter in the acquisition plane: not an IBSI feature",
    ),
    ("glcm", "MCC"): (
        "GLCM-MCC",
        _ONE,
        "maximal correlation coefficient: not an IBSI feature",
    ),
}


@dataclass(frozen=True)
class FeatureCode:
    """The coded concept name and unit kind of one pyradiomics feature."""

    feature_class: str
    feature: str
    value: str
    scheme: str
    meaning: str
    unit: UnitKind

    @property
    def pyradiomics_name(self) -> str:
        """``firstorder_Mean``: the name in pyradiomics' output without the image type."""
        return f"{self.feature_class}_{self.feature}"


@functools.cache
def _dicom_ibsi_meanings() -> dict[str, str]:
    """``{IBSI identifier: code meaning}`` of the IBSI codes DICOM lists (pydicom's copy)."""
    return {concept.value: concept.meaning for concept in Collection(IBSI_SCHEME).concepts.values()}


@functools.cache
def feature_code(feature_class: str, feature: str) -> FeatureCode:
    """The code of a pyradiomics feature (``KeyError`` naming it when it has none)."""
    private = PRIVATE_CODES.get((feature_class, feature))
    if private is not None:
        value, unit, _ = private
        return FeatureCode(
            feature_class, feature, value, PRIVATE_SCHEME, f"{feature_class}_{feature}", unit
        )
    try:
        value, unit = IBSI_CODES[feature_class][feature]
    except KeyError:
        raise KeyError(f"no code for pyradiomics feature {feature_class}_{feature}") from None
    meaning = _dicom_ibsi_meanings().get(value) or IBSI_OUTSIDE_DICOM[value]
    return FeatureCode(feature_class, feature, value, IBSI_SCHEME, meaning, unit)


def all_feature_codes() -> list[FeatureCode]:
    """Every coded feature, by class then feature name."""
    keys = {(c, f) for c, features in IBSI_CODES.items() for f in features} | set(PRIVATE_CODES)
    return [feature_code(c, f) for c, f in sorted(keys)]


#: Where :func:`feature_table_markdown` is written (next to the templates).
TABLE_FILE = "RADIOMICS.md"


def feature_table_markdown() -> str:
    """The feature, code and unit table shipped as ``dicom_sr_templates/RADIOMICS.md``."""
    lines = [
        "# Radiomics features: codes and units",
        "",
        "Generated by `python -m node.results.radiomics_codes` from",
        "`node/results/radiomics_codes.py` (a test fails when it is stale). How features are",
        "computed and the parameter set: `dicom_sr_templates/README.md`, section Radiomics.",
        "",
        "Unit on CT: `[hnsf'U]` (Hounsfield unit) for *intensity*; other modalities use",
        "`[arb'U]` (arbitrary unit). Texture features are computed on discretised grey levels",
        "and are dimensionless (`1`).",
        "",
        "| class | pyradiomics feature | code | scheme | code meaning | unit (CT) |",
        "|---|---|---|---|---|---|",
    ]
    for code in all_feature_codes():
        unit = ucum_unit(code.unit, "CT")[0]
        lines.append(
            f"| {code.feature_class} | {code.feature} | `{code.value}` | {code.scheme} "
            f"| {code.meaning} | `{unit}` |"
        )
    lines += ["", "Private codes (`99AINODE`) and why IBSI's code is not used:", ""]
    for (feature_class, feature), (value, _, reason) in sorted(PRIVATE_CODES.items()):
        lines.append(f"- `{value}` ({feature_class}_{feature}): {reason}")
    return "\n".join(lines) + "\n"


def _main() -> None:  # pragma: no cover - a developer tool
    from node.contract.template import default_template_dir

    path = Path(default_template_dir()) / TABLE_FILE
    path.write_text(feature_table_markdown())
    print(path)


if __name__ == "__main__":  # pragma: no cover
    _main()
