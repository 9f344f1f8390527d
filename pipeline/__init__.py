"""The pure core shared by the node and the training package: DICOM reading, preprocessing, models.

No network, no database, no global state.
"""
