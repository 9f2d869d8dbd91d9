"""DIMSE status codes the node returns at its DICOM boundary (PS3.7 Annex C)."""

SUCCESS = 0x0000
#: Refused: out of resources (disk full, cannot write the spool).
OUT_OF_RESOURCES = 0xA700
#: Error: data set does not match the SOP class of the request.
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
#: Error: cannot understand — the data set could not be decoded.
CANNOT_UNDERSTAND = 0xC000
#: Cannot understand: a required identifier is missing or malformed.
MISSING_IDENTIFIER = 0xC001
#: Cannot understand: SOP Instance UID differs from the request's Affected SOP Instance UID.
SOP_INSTANCE_MISMATCH = 0xC002
#: Cannot understand: uncompressed pixel data whose length does not match Rows, Columns,
#: Samples per Pixel, Bits Allocated and Number of Frames (node.pixel_length).
PIXEL_DATA_MISMATCH = 0xC003
