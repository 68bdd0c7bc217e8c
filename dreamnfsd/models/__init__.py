"""Neural fields: hash encoding (torch | tcnn), MLPs, the NeRF field and the background."""

from dreamnfsd.models.background import Background, BackgroundConfig
from dreamnfsd.models.encodings import HashEncoding, HashEncodingConfig, tcnn_available
from dreamnfsd.models.field import FieldConfig, NeRFField, trunc_exp
from dreamnfsd.models.mlp import MLP

__all__ = [
    "MLP",
    "Background",
    "BackgroundConfig",
    "FieldConfig",
    "HashEncoding",
    "HashEncodingConfig",
    "NeRFField",
    "tcnn_available",
    "trunc_exp",
]
