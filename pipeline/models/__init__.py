"""Model builders: the single-view classifiers (thesis Chapter 5) and the study aggregator."""

from pipeline.models.aggregator import MultiViewAggregator, build_aggregator
from pipeline.models.registry import (
    ARCHITECTURES,
    SingleViewModel,
    build_model,
    min_input_side,
)
from pipeline.models.resnet import ResNet18Classifier
from pipeline.models.rx import RxNet, gradient_norms

__all__ = [
    "ARCHITECTURES",
    "MultiViewAggregator",
    "ResNet18Classifier",
    "RxNet",
    "SingleViewModel",
    "build_aggregator",
    "build_model",
    "gradient_norms",
    "min_input_side",
]
