"""Evaluation: ROC/AUC with bootstrap intervals, study-level aggregation, calibration."""
