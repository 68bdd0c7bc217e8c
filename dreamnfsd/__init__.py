"""dreamnfsd: text-to-3D with hash-grid NeRFs and Noise-Free Score Distillation."""

__version__ = "0.1.0"
