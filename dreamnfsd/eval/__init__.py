"""Evaluation helpers: the shape/colour classifier for primitive renders."""

from dreamnfsd.eval.classifier import ClassifierConfig, PrimitiveClassifier, classify, load_classifier, save_classifier

__all__ = ["ClassifierConfig", "PrimitiveClassifier", "classify", "load_classifier", "save_classifier"]
