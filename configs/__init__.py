"""Hydra configs shipped with dreamnfsd (this folder is the package ``dreamnfsd.configs``; see pyproject.toml)."""
