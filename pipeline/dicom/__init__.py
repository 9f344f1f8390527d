"""DICOM facts the node and the training package share, each spelt in exactly one place.

`dimse`: DIMSE status codes; `uids`: UID validity, the SOP classes and transfer syntaxes we
use; `addresses`: AE titles and ``AET@HOST:PORT`` peer addresses.
"""
