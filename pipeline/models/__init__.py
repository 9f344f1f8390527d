"""Model builders: the single-view classifiers (thesis Chapter 5) and the study aggregator."""

from pipeline.models.aggregator import MultiViewAggregator, build_aggregator
from pipeline.models.ensemble import ViewEnsemble, ensemble_arch, member_archs
from pipeline.models.flip import FlipAveraged, with_test_time_flip, without_test_time_flip
from pipeline.models.registry import (
    ARCHITECTURES,
    SingleViewModel,
    build_model,
    build_view_model,
    min_input_side,
)
from pipeline.models.resnet import ResNet18Classifier
from pipeline.models.rx import RxNet, gradient_norms

__all__ = [
    "ARCHITECTURES",
    "FlipAveraged",
    "MultiViewAggregator",
    "ResNet18Classifier",
    "RxNet",
    "SingleViewModel",
    "ViewEnsemble",
    "build_aggregator",
    "build_model",
    "build_view_model",
    "ensemble_arch",
    "gradient_norms",
    "member_archs",
    "min_input_side",
    "with_test_time_flip",
    "without_test_time_flip",
]
