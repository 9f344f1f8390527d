"""A synthetic wrist-radiograph archive: rendering, DICOM encoding and the archive writer."""
