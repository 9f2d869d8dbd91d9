"""Building blocks shared by the synthetic DICOM writers.

:func:`new_instance` starts a dataset of one SOP instance with its file meta
information (Explicit VR Little Endian), and :func:`set_grayscale_pixels` fills the
Image Pixel module of one unsigned 16-bit grayscale frame. The CT, MR and 2D
(DX, CR, MG) writers all start and fill their instances this way.
"""

from __future__ import annotations

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian


def new_instance(sop_class_uid: str, sop_instance_uid: str) -> Dataset:
    """An empty ``ISO_IR 100`` dataset of one instance, with its file meta information."""
    sop_uid = pydicom.uid.UID(sop_instance_uid)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = pydicom.uid.UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_uid
    return ds


def set_grayscale_pixels(
    ds: Dataset, pixels: np.ndarray, bits_stored: int, photometric: str = "MONOCHROME2"
) -> None:
    """Image Pixel module of one unsigned grayscale frame ``(rows, columns)``, 16 bits allocated."""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = (int(n) for n in pixels.shape)
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(pixels).astype("<u2").tobytes()
