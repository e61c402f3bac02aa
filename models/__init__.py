"""Probability models: base learners, stacking/ensembles, calibration, validation, metrics."""
