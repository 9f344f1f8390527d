"""The training package: synthetic archive, dataset preparation, model fitting and export."""
