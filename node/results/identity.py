"""The identity every object of one result series shares, made once per series.

A builder gets it as one value (``series``) instead of copied keyword arguments: the
Series Instance UID, Series Number and Series Description the table gives the kind, and
the algorithm as the manufacturer and General Equipment of the object.
"""

from __future__ import annotations

from dataclasses import dataclass

from node.contract.template import ResultTemplate


@dataclass(frozen=True)
class SeriesIdentity:
    """Series and equipment attributes of one result series.

    Attributes
    ----------
    series_instance_uid, series_number, series_description
        The General Series attributes (the description may be None for an SR built
        outside :func:`node.results.build_results`).
    manufacturer, manufacturer_model_name, software_versions, device_uid
        The algorithm as General Equipment: its manufacturer, name, version and Device
        UID (which highdicom's constructors take as the device serial number).
    """

    series_instance_uid: str
    series_number: int
    series_description: str | None
    manufacturer: str
    manufacturer_model_name: str
    software_versions: str
    device_uid: str

    @classmethod
    def of(
        cls,
        template: ResultTemplate,
        *,
        series_instance_uid: str,
        series_number: int,
        series_description: str | None,
    ) -> SeriesIdentity:
        """The identity of a series of ``template``'s algorithm."""
        algorithm = template.algorithm
        return cls(
            series_instance_uid=series_instance_uid,
            series_number=series_number,
            series_description=series_description,
            manufacturer=algorithm.manufacturer,
            manufacturer_model_name=algorithm.name,
            software_versions=algorithm.version,
            device_uid=algorithm.device_uid,
        )
