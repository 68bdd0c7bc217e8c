"""The benchmark's summary and markdown report over runs of different vintages."""

from __future__ import annotations

import copy
import math

from dreamnfsd.eval.summary import markdown, summarise

# A saved run as the benchmark wrote it before the size diagnostic existed (metric values rounded).
OLD_RUN = {
    "r_precision": 1.0,
    "iou": {"side": 0.975, "top": 0.930},
    "iou_any_scale": {"side": 0.991, "top": 0.960},
    "fitted_scale": {"side": 1.02, "top": 1.03},
    "rotation_step_deg": 1.0,
    "truth_supersample": 1,
    "top_rotation_variation": 0.287,
    "colour_error": 0.215,
    "broken_view_share": 0.0,
    "geometry": {
        "iou": 0.907,
        "chamfer": 0.0167,
        "fscore": 0.643,
        "normal_consistency": 0.967,
        "components": 1,
        "volume": 1.077,
        "true_volume": 1.0,
        "area_ratio": 1.043,
        "axis_aligned_share": 0.645,
    },
    "image_geometry": {"normal_angle_deg": 11.37, "depth_rel_error": 0.0108, "pixels": 4661},
    "prompt": "a red cube",
    "method": "nfsd",
    "guidance_scale": 7.5,
    "wall_time_s": 576.2,
}


def test_runs_scored_before_the_size_diagnostic_still_summarise():
    """An old folder's runs lack fscore_true_volume: the report is still built, the diagnostic's mean is over the
    runs that have it, and NaN (shown as a dash) when none has."""
    new = copy.deepcopy(OLD_RUN)
    new["method"] = "sds"
    new["guidance_scale"] = 100.0
    new["geometry"].update(fscore_true_volume=0.9, volume_scale=0.976)
    summary = summarise([OLD_RUN, new])
    assert math.isnan(summary["nfsd"]["fscore_true_volume"]) and summary["sds"]["fscore_true_volume"] == 0.9
    assert summary["nfsd"]["per_shape"]["cube"]["volume_ratio"] == 1.077
    table = markdown(summary, [OLD_RUN, new])
    assert "| 0.645 | 1.077 | – |" in table and "| 0.645 | 1.077 | 0.900 |" in table
