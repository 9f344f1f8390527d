"""The DICOM node service: configuration, DICOM networking and the command line."""

__version__ = "0.1.0"
