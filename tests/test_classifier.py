"""The shipped classifier names shape and colour of fresh ground-truth renders, overhead views included."""

import math

import pytest
import torch

from dreamnfsd.data import COLORS, SHAPES, render_primitives
from dreamnfsd.eval import classify, load_classifier
from dreamnfsd.eval.classifier import DEFAULT_DIR

pytestmark = pytest.mark.skipif(not (DEFAULT_DIR / "config.json").exists(), reason="classifier not trained yet")


def test_classifier_accuracy_on_fresh_renders():
    n = 500
    g = torch.Generator().manual_seed(12345)
    shapes = torch.randint(len(SHAPES), (n,), generator=g)
    colors = torch.randint(len(COLORS), (n,), generator=g)
    az = 2 * math.pi * torch.rand(n, generator=g)
    # Elevation -10..90 degrees, uniform on the sphere's height; the last 50 are straight overhead.
    lo, hi = math.sin(math.radians(-10)), 1.0
    el = torch.asin(lo + (hi - lo) * torch.rand(n, generator=g))
    el[-50:] = math.radians(90)
    rgb = render_primitives(shapes, colors, az, el, generator=g)["rgb"]
    shape_idx, color_idx, probs = classify(rgb, load_classifier())
    shape_acc = (shape_idx == shapes).float().mean().item()
    color_acc = (color_idx == colors).float().mean().item()
    print(f"classifier: shape {shape_acc:.4f} colour {color_acc:.4f}")
    assert probs["shape"].shape == (n, len(SHAPES)) and probs["color"].shape == (n, len(COLORS))
    assert shape_acc >= 0.98 and color_acc >= 0.98
