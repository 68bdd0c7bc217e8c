# syntax=docker/dockerfile:1
# GPU image for dreamnfsd jobs: Stable Diffusion prior, tiny-cuda-nn hash grid, nerfacc occupancy grid.
# Build and run: see docs/docker.md.
#
# CUDA pairing: torch 2.13.0 from the cu128 index carries its own CUDA 12.8 runtime, and tiny-cuda-nn and nerfacc
# are compiled below with this image's nvcc, which must be the same CUDA 12.8: torch's extension builder refuses
# another major version, and a different minor one risks kernels built for a runtime torch does not load.
# To change CUDA, change both together, e.g. nvidia/cuda:12.6.3-cudnn-devel-ubuntu24.04 with .../whl/cu126.
# A devel image (not runtime) because nvcc and the CUDA headers are needed to build both extensions.
# Ubuntu 24.04 gives Python 3.12 (tomllib, and inside torch 2.13's supported range).
FROM nvidia/cuda:12.8.1-cudnn-devel-ubuntu24.04

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
# Compute capabilities to compile for (A100 80, A10/RTX30 86, L4/RTX40 89, H100 90); the build machine needs no GPU.
ARG TCNN_CUDA_ARCHITECTURES="80;86;89;90"
# tiny-cuda-nn has no releases on PyPI; its v2.0 tag (the one conda-forge packages) builds against CUDA 12.8.
# Override with a commit for newer fixes (e.g. CUDA 13 support landed after v2.0).
ARG TCNN_REF=v2.0
ARG NERFACC_VERSION=0.5.3
# Parallel nvcc jobs: each can take several GB of RAM while compiling tiny-cuda-nn.
ARG MAX_JOBS=4
ARG APP_UID=1000

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Versions come from the pinned Ubuntu release of the base image; python3-dev and build-essential are for the
# extension builds, git for pip's tiny-cuda-nn checkout (with submodules).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3 python3-venv python3-dev build-essential git ninja-build ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# The runtime user. Ubuntu 24.04 images ship a user "ubuntu" holding uid 1000, which most hosts' first user has,
# so that files written to the mounted /outputs belong to the person who ran the job.
RUN (userdel --remove ubuntu 2>/dev/null || true) \
    && useradd --create-home --uid "${APP_UID}" --shell /bin/bash dreamnfsd \
    && mkdir -p /cache/huggingface /outputs \
    && chown dreamnfsd:dreamnfsd /cache/huggingface /outputs \
    && ln -s /outputs /home/dreamnfsd/outputs

RUN python3 -m venv "${VIRTUAL_ENV}" \
    && pip install --upgrade "pip>=24" "setuptools>=68" "wheel>=0.42" "packaging>=24"

# torch first and from the CUDA index: everything after this (the extensions, the project's "torch>=2.1")
# builds against or is satisfied by this build, so pip never swaps in another torch.
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"

# tiny-cuda-nn's torch bindings, built against the torch above (hence --no-build-isolation). The stubs folder
# provides libcuda.so to link against; at run time the driver's own libcuda is used. Kept apart from the torch
# layer on purpose: this is the slow one (tens of minutes), and a failure here must not re-download torch.
# hadolint ignore=DL3059
RUN TCNN_CUDA_ARCHITECTURES="${TCNN_CUDA_ARCHITECTURES}" MAX_JOBS="${MAX_JOBS}" \
    LIBRARY_PATH=/usr/local/cuda/lib64/stubs \
    pip install --no-build-isolation \
        "git+https://github.com/NVlabs/tiny-cuda-nn@${TCNN_REF}#subdirectory=bindings/torch"

# nerfacc's PyPI wheel is pure Python and JIT-compiles its kernels on first use (minutes, per container, into a
# cache the non-root user must own). Building the sdist instead compiles nerfacc.csrc now, for the same
# architectures as tiny-cuda-nn ("86" -> "8.6"), and nerfacc imports that ahead-of-time module first.
RUN TORCH_CUDA_ARCH_LIST="$(sed -E 's/([0-9]+)([0-9])/\1.\2/g' <<< "${TCNN_CUDA_ARCHITECTURES}")" \
    MAX_JOBS="${MAX_JOBS}" \
    pip install --no-build-isolation --no-binary nerfacc "nerfacc==${NERFACC_VERSION}" \
    && pip show --files nerfacc | grep -qE "nerfacc/csrc[^/]*\.so"

# The project's dependencies (pyproject's [project.dependencies] plus the "cuda" extra), in a layer that only
# changes with pyproject.toml. The constraints pin the torch and nerfacc built above.
WORKDIR /opt/dreamnfsd
COPY pyproject.toml ./
COPY scripts/pyproject_requirements.py scripts/
COPY dreamnfsd/__init__.py dreamnfsd/
COPY dreamnfsd/utils/__init__.py dreamnfsd/utils/requirements.py dreamnfsd/utils/
RUN python scripts/pyproject_requirements.py --extra cuda pyproject.toml > /tmp/requirements.txt \
    && pip freeze | grep -iE '^(torch|nerfacc)==' > /tmp/constraints.txt \
    && pip install -r /tmp/requirements.txt -c /tmp/constraints.txt \
    && rm /tmp/requirements.txt /tmp/constraints.txt

# The source last, installed as a normal (non-editable) package: the configs and the built-in prior ship inside it.
COPY . .
RUN pip install --no-deps --no-build-isolation .

# Model weights go to a mounted cache, so they are downloaded once per host and not baked into the image.
# Outputs: the app's default output_root "outputs" is resolved from the working directory, where it is a link
# to the mounted /outputs (passing output_root=/outputs does the same explicitly).
ENV HF_HOME=/cache/huggingface
VOLUME ["/cache/huggingface", "/outputs"]

# Numeric, so that the user is resolvable by uid on the host and by Kubernetes runAsNonRoot checks.
USER ${APP_UID}
WORKDIR /home/dreamnfsd
ENTRYPOINT ["dreamnfsd"]
CMD ["--help"]
