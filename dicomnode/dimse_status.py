"""DIMSE status codes the node returns (PS3.7 Annex C). The one place they are spelt in hex."""

SUCCESS = 0x0000
