"""Neural fields: hash encoding (torch | tcnn), MLPs, the NeRF field and the background."""

from dreamnfsd.models.background import Background, BackgroundConfig
from dreamnfsd.models.encodings import HashEncoding, HashEncodingConfig, tcnn_available
from dreamnfsd.models.field import FieldConfig, HashGridField, NeRFField, SDFConfig, build_field, trunc_exp
from dreamnfsd.models.mlp import MLP
from dreamnfsd.models.sdf_field import SDFField

__all__ = [
    "MLP",
    "Background",
    "BackgroundConfig",
    "FieldConfig",
    "HashEncoding",
    "HashEncodingConfig",
    "HashGridField",
    "NeRFField",
    "SDFConfig",
    "SDFField",
    "build_field",
    "tcnn_available",
    "trunc_exp",
]
