"""Procedural training data for the built-in prior and the classifier."""

from dreamnfsd.data.primitives import (
    ALBEDO,
    COLORS,
    DEGRADATIONS,
    NEGATIVE_PROMPT,
    SCALE_JITTER,
    SHAPES,
    make_cameras,
    make_dataset,
    primitive_occupancy,
    primitive_sdf,
    render_primitives,
)

__all__ = [
    "ALBEDO",
    "COLORS",
    "DEGRADATIONS",
    "NEGATIVE_PROMPT",
    "SCALE_JITTER",
    "SHAPES",
    "make_cameras",
    "make_dataset",
    "primitive_occupancy",
    "primitive_sdf",
    "render_primitives",
]
