"""Datasets of prepared views and studies, the class-balancing sampler and augmentation presets."""
