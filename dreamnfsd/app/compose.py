"""Composing a run's config: the Hydra ``configs/`` shipped in the package, command-line overrides, the typed schema.

``configs/`` at the repository's top level is the package ``dreamnfsd.configs`` (pyproject maps it), so an editable
checkout and an installed wheel read the same files; Hydra finds them through ``pkg://dreamnfsd.configs``.
"""

from __future__ import annotations

from pathlib import Path

from dreamnfsd.utils.errors import UserError

CONFIG_MODULE = "dreamnfsd.configs"
CONFIG_SEARCH_PATH = f"pkg://{CONFIG_MODULE}"


def config_dir() -> Path:
    """The folder of the shipped Hydra configs (for display and tests; composition goes through the package)."""
    from importlib.resources import files

    return Path(str(files(CONFIG_MODULE)))


def register_resolvers() -> None:
    from omegaconf import OmegaConf

    from dreamnfsd.app.schema import slugify

    if not OmegaConf.has_resolver("slug"):
        OmegaConf.register_new_resolver("slug", lambda p: slugify(str(p)))


def one_line(err: BaseException) -> str:
    """Hydra and OmegaConf spread a message over lines and chain causes; keep the informative part on one line."""
    parts: list[str] = []
    cur: BaseException | None = err
    while cur is not None:
        text = " ".join(str(cur).split())
        if text and text not in parts:
            parts.append(text)
        cur = cur.__cause__
    return " — ".join(parts)


def compose(overrides: list[str]):
    """Compose the shipped configs with command-line overrides. Raises :class:`UserError` for unknown keys or bad
    values."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from dreamnfsd.app.schema import register_configs

    register_configs()
    register_resolvers()
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            return hydra_compose(config_name="config", overrides=overrides)
    except (HydraException, OmegaConfBaseException, ValueError) as e:
        raise UserError(f"config: {one_line(e)}") from e


def _check_pairs(dcfg) -> None:
    """Tuple-typed fields, checked on the raw config before the dataclasses (whose __post_init__ unpacks them)."""
    from omegaconf import OmegaConf

    from dreamnfsd.app.schema import PAIR_EXAMPLES, check_pair, check_t_range

    for key, example in PAIR_EXAMPLES.items():
        value = OmegaConf.select(dcfg, key, default=None)
        if value is None:
            continue
        value = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
        if key == "guidance.t_range":
            check_t_range(value)
        else:
            check_pair(value, key, example)


def to_run_config(dcfg):
    """DictConfig -> typed :class:`~dreamnfsd.train.config.RunConfig`, with the missing-prompt case made readable."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if OmegaConf.is_missing(dcfg, "prompt"):
        raise UserError('prompt: missing; pass one, e.g. dreamnfsd prompt="a red cube"')
    _check_pairs(dcfg)
    try:
        return OmegaConf.to_object(dcfg)
    except OmegaConfBaseException as e:
        raise UserError(f"config: {one_line(e)}") from e
    except (ValueError, TypeError) as e:  # a config dataclass's own __post_init__ check
        raise UserError(f"config: {one_line(e)}") from e
