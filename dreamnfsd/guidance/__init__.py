"""Score-distillation guidance: priors, view-dependent prompts, and the shared SDS/NFSD step."""

from dreamnfsd.guidance.core import (
    Guidance,
    GuidanceConfig,
    GuidanceOutput,
    guidance_step,
    sample_timesteps,
    t_bounds,
    timestep_weights,
)
from dreamnfsd.guidance.nfsd import nfsd_direction, nfsd_needs_negative
from dreamnfsd.guidance.priors import Prior, PriorConfig, load_prior
from dreamnfsd.guidance.prompts import PromptEmbeddings, TextEmbeddings, view_labels, view_prompts
from dreamnfsd.guidance.sds import sds_direction

__all__ = [
    "Guidance",
    "GuidanceConfig",
    "GuidanceOutput",
    "Prior",
    "PriorConfig",
    "PromptEmbeddings",
    "TextEmbeddings",
    "guidance_step",
    "load_prior",
    "nfsd_direction",
    "nfsd_needs_negative",
    "sample_timesteps",
    "sds_direction",
    "t_bounds",
    "timestep_weights",
    "view_labels",
    "view_prompts",
]
