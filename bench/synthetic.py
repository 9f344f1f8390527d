"""A full-size synthetic radiograph as the node would decode it, for the benchmarks."""

from __future__ import annotations

import numpy as np
from pydicom import uid
from pydicom.dataset import Dataset, FileMetaDataset

from pipeline.dicomio import Radiograph, read_radiograph
from train.phantoms.encoding import to_stored


def radiograph(image: np.ndarray, rng: np.random.Generator, *,
               photometric: str = "monochrome2") -> Radiograph:  # fmt: skip
    """A rendered display image stored as a 14-bit DX instance and read back."""
    pixels, attrs = to_stored(image, photometric=photometric, bits_stored=14, voi="window",
                              rng=rng)  # fmt: skip
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    ds.SOPClassUID = uid.DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = uid.generate_uid()
    ds.BodyPartExamined = "WRIST"
    ds.update(attrs)
    ds.PixelData = pixels.tobytes()
    return read_radiograph(ds)
