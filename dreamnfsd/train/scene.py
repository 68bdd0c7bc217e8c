"""The trainable scene (field, occupancy grid, background) and the renderer that draws it."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dreamnfsd.models.background import Background
from dreamnfsd.models.field import HashGridField, build_field
from dreamnfsd.rendering.occupancy_grid import OccupancyGrid
from dreamnfsd.rendering.renderer import VolumeRenderer
from dreamnfsd.train.config import RunConfig


@dataclass
class Scene:
    field: HashGridField
    grid: OccupancyGrid
    background: Background
    renderer: VolumeRenderer

    def state_dict(self) -> dict:
        return {
            "field": self.field.state_dict(),
            "grid": self.grid.state_dict(),
            "background": self.background.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.field.load_state_dict(state["field"])
        self.grid.load_state_dict(state["grid"])
        self.background.load_state_dict(state["background"])


def build_scene(cfg: RunConfig, device: torch.device, generator: torch.Generator | None = None) -> Scene:
    """Field, grid, background and renderer from a :class:`~dreamnfsd.train.config.RunConfig`. Seed torch first.

    ``generator`` (on ``device``) drives the grid's jittered initial marking.
    """
    field = build_field(cfg.field, device).to(device)
    grid = OccupancyGrid(cfg.grid, bound=cfg.field.bound).to(device)
    background = Background(cfg.background).to(device)
    renderer = VolumeRenderer(field, grid, background, cfg.renderer)
    # Start from the field's initial density (the centre blob) instead of an all-occupied grid.
    renderer.mark_occupancy(generator)
    return Scene(field, grid, background, renderer)
