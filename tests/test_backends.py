"""Backend selection, nerfacc layout/compositing agreement on CPU, and CUDA agreement tests (skipped without CUDA).

On CUDA: the torch hash encoding against tiny-cuda-nn (equal fitting quality: tcnn's grid offsets and hashing
differ, so values cannot match), and the torch renderer against the nerfacc one for the same field and grid.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import math

import pytest
import torch
import torch.nn.functional as F

from dreamnfsd.cameras import turntable_cameras
from dreamnfsd.models import (
    Background,
    BackgroundConfig,
    FieldConfig,
    HashEncoding,
    HashEncodingConfig,
    SDFConfig,
    build_field,
    tcnn_available,
)
from dreamnfsd.rendering import (
    OccupancyGrid,
    OccupancyGridConfig,
    RendererConfig,
    VolumeRenderer,
    accumulate_along_rays,
    render_weights,
    resolve_backend,
)
from dreamnfsd.rendering.backends import nerfacc_available, sync_estimator

HAS_CUDA = torch.cuda.is_available()
HAS_NERFACC = importlib.util.find_spec("nerfacc") is not None


needs_nerfacc = pytest.mark.skipif(not HAS_NERFACC, reason="needs nerfacc (pip install nerfacc==0.5.3)")


def sphere_field(device: str, kind: str = "density", backend: str = "torch"):
    """A small field whose start is the scene: the density blob trunc_exp(10 (1 - r / 0.5)), or the SDF's sphere
    of radius 0.5 (sharpness 100); grey albedo."""
    torch.manual_seed(0)
    enc = HashEncodingConfig(n_levels=4, log2_hashmap_size=12, base_resolution=8, per_level_scale=2.0, backend=backend)
    sdf = SDFConfig(sharpness_start=100.0, sharpness_end=100.0)
    return build_field(FieldConfig(kind=kind, encoding=enc, hidden_dim=32, sdf=sdf), device).to(device)


def make_renderer(field, backend: str, device: str) -> VolumeRenderer:
    grid = OccupancyGrid(OccupancyGridConfig(resolution=64)).to(device)
    background = Background(BackgroundConfig(kind="constant")).to(device)
    r = VolumeRenderer(field, grid, background, RendererConfig(backend=backend, stratified=False))
    r.mark_occupancy(torch.Generator(device).manual_seed(0))
    return r


# ---- CPU ----------------------------------------------------------------------------------------------------------
def test_backend_resolution_on_cpu(caplog):
    with caplog.at_level(logging.INFO, logger="dreamnfsd.rendering.backends"):
        assert resolve_backend("auto", torch.device("cpu")) == "torch"
        assert resolve_backend("torch", torch.device("cpu")) == "torch"
    with pytest.raises(RuntimeError, match="nerfacc"):
        resolve_backend("nerfacc", torch.device("cpu"))
    with pytest.raises(ValueError):
        resolve_backend("optix", torch.device("cpu"))
    assert not HAS_CUDA or nerfacc_available() == HAS_NERFACC
    if not HAS_CUDA:
        assert not tcnn_available()


@needs_nerfacc
def test_grid_layout_matches_nerfacc_on_cpu():
    """Our grid copied into nerfacc's OccGridEstimator answers nerfacc's own (pure torch) lookup identically."""
    from nerfacc.grid import _query

    from dreamnfsd.rendering.backends import make_estimator

    grid = OccupancyGrid(OccupancyGridConfig(resolution=32))
    # An asymmetric shape, so that a transposed layout would show.
    grid.mark_from(lambda x: 1.0 * ((x - torch.tensor([0.5, -0.2, 0.1])).norm(dim=-1) < 0.3) + 1.0 * (x[:, 2] > 0.8))
    est = make_estimator(grid)
    sync_estimator(est, grid)
    x = torch.rand(20000, 3) * 2.2 - 1.1
    theirs, inside = _query(x, est.binaries, est.aabbs[0])
    torch.testing.assert_close(grid.occupied(x), theirs & inside)


@needs_nerfacc
def test_compositing_matches_nerfacc_batched_on_cpu():
    """nerfacc's batched (2-D) render_weight_from_density runs on CPU: our packed weights must agree."""
    import nerfacc

    gen = torch.Generator().manual_seed(0)
    n_rays, n_samples = 7, 40
    edges = torch.sort(torch.rand(n_rays, n_samples + 1, generator=gen) * 4, dim=1).values
    sigmas = torch.rand(n_rays, n_samples, generator=gen) * 3
    w_ref, t_ref, _ = nerfacc.render_weight_from_density(edges[:, :-1], edges[:, 1:], sigmas)
    ray = torch.arange(n_rays).repeat_interleave(n_samples)
    ranks = torch.arange(n_samples).repeat(n_rays)
    w, t, _ = render_weights(sigmas.view(-1), (edges[:, 1:] - edges[:, :-1]).reshape(-1), ray, ranks, n_rays)
    torch.testing.assert_close(w.view(n_rays, -1), w_ref)
    torch.testing.assert_close(t.view(n_rays, -1), t_ref)
    torch.testing.assert_close(accumulate_along_rays(w, ray, n_rays), w_ref.sum(1, keepdim=True))


# ---- CUDA ---------------------------------------------------------------------------------------------------------
@pytest.mark.cuda
def test_torch_encoding_cuda_matches_cpu():
    cfg = HashEncodingConfig(n_levels=6, log2_hashmap_size=14, base_resolution=8, per_level_scale=1.8, backend="torch")
    torch.manual_seed(0)
    cpu = HashEncoding(cfg)
    gpu = HashEncoding(cfg).cuda()
    gpu.load_state_dict(cpu.state_dict())
    x = torch.rand(4096, 3)
    a, b = cpu(x), gpu(x.cuda())
    torch.testing.assert_close(b.cpu(), a, atol=1e-6, rtol=1e-5)
    g = torch.randn_like(a)
    a.backward(g)
    b.backward(g.cuda())
    for p, q in zip(cpu.tables, gpu.tables):
        torch.testing.assert_close(q.grad.cpu(), p.grad, atol=1e-5, rtol=1e-4)


def _fit_encoding(enc, device: str, steps: int = 300) -> float:
    """Fit encoding + linear head to a smooth 3-D colour field; returns the final held-out MSE."""
    torch.manual_seed(0)
    head = torch.nn.Linear(enc.out_dim, 3).to(device)
    params = [p for p in enc.parameters() if p.requires_grad] + list(head.parameters())
    opt = torch.optim.Adam(params, lr=1e-2, eps=1e-15)

    def target(x):
        return torch.sin(6 * x) * torch.cos(4 * x.roll(1, -1)) * 0.5 + 0.5

    for _ in range(steps):
        x = torch.rand(8192, 3, device=device)
        loss = F.mse_loss(head(enc(x)), target(x))
        opt.zero_grad()
        loss.backward()
        opt.step()
    x = torch.rand(20000, 3, device=device)
    with torch.no_grad():
        return F.mse_loss(head(enc(x)), target(x)).item()


@pytest.mark.cuda
@pytest.mark.skipif(not tcnn_available(), reason="needs tinycudann (built from source on CUDA machines)")
def test_tcnn_and_torch_encodings_reach_equal_quality():
    base = dict(n_levels=8, log2_hashmap_size=15, base_resolution=8, per_level_scale=1.5)
    torch_enc = HashEncoding(HashEncodingConfig(**base, backend="torch"), "cuda").cuda()
    tcnn_enc = HashEncoding(HashEncodingConfig(**base, backend="tcnn"), "cuda").cuda()
    x = torch.rand(100, 3, device="cuda")
    assert tcnn_enc(x).shape == torch_enc(x).shape == (100, 16)
    assert tcnn_enc.backend == "tcnn" and torch_enc.backend == "torch" and not list(tcnn_enc.tables)
    m_torch, m_tcnn = _fit_encoding(torch_enc, "cuda"), _fit_encoding(tcnn_enc, "cuda")
    assert math.isfinite(m_tcnn) and m_tcnn < 0.01 and m_torch < 0.01
    assert max(m_torch, m_tcnn) < 2.0 * min(m_torch, m_tcnn) + 1e-4


@pytest.mark.cuda
@pytest.mark.parametrize("kind", ["density", "sdf"])
def test_torch_renderer_cuda_matches_cpu(kind):
    """The same field and occupancy grid on both devices (a field built on CUDA draws its initial weights from
    another generator, and marking the grid samples with one): only the arithmetic differs."""
    o, d = turntable_cameras(2, height=24, width=24).rays()
    field = sphere_field("cpu", kind)
    cpu = make_renderer(field, "torch", "cpu")
    gpu = make_renderer(copy.deepcopy(field).cuda(), "torch", "cuda")
    gpu.grid.load_state_dict(cpu.grid.state_dict())
    with torch.no_grad():
        a, b = cpu.render(o, d), gpu.render(o.cuda(), d.cuda())
    torch.testing.assert_close(b["rgb"].cpu(), a["rgb"], atol=1e-4, rtol=0)


@pytest.mark.cuda
@pytest.mark.skipif(not nerfacc_available(), reason="needs nerfacc importable (pip install nerfacc==0.5.3)")
@pytest.mark.parametrize("kind", ["density", "sdf"])
def test_nerfacc_and_torch_renderers_agree(kind):
    """Same field, same grid: nerfacc's traversal + packed weights and our torch path give the same image."""
    field = sphere_field("cuda", kind)
    r_torch = make_renderer(field, "torch", "cuda")
    r_acc = make_renderer(field, "nerfacc", "cuda")
    r_acc.grid.load_state_dict(r_torch.grid.state_dict())
    o, d = turntable_cameras(3, elevation_deg=20.0, height=32, width=32, device="cuda").rays()
    with torch.no_grad():
        a = r_torch.render(o, d, background_color=torch.tensor([0.2, 0.4, 0.6], device="cuda"), need_distortion=True)
        b = r_acc.render(o, d, background_color=torch.tensor([0.2, 0.4, 0.6], device="cuda"), need_distortion=True)
    # Sample positions differ by under a step (nerfacc steps from the near plane, we from the box entry).
    assert (a["rgb"] - b["rgb"]).square().mean().item() < 1e-3
    assert (a["opacity"] - b["opacity"]).abs().mean().item() < 2e-2
    assert 0.5 < a["samples_per_ray"] / max(b["samples_per_ray"], 1e-9) < 2.0
    assert a["distortion_loss"].item() == pytest.approx(b["distortion_loss"].item(), rel=0.1)
    # Gradients flow through the nerfacc path as well.
    out = r_acc.render(o, d, shading="lambertian")
    loss = out["rgb"].mean() + out["orientation_loss"] + out.get("eikonal_loss", 0.0)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in field.mlp_parameters() if p.grad is not None)
    if kind == "sdf":
        assert a["eikonal_loss"].item() == pytest.approx(b["eikonal_loss"].item(), abs=1e-3)


@pytest.mark.cuda
@pytest.mark.skipif(not tcnn_available(), reason="needs tinycudann (built from source on CUDA machines)")
def test_sdf_field_on_tcnn_has_finite_difference_normals_and_gradients():
    """tiny-cuda-nn's hash grid has no double backward; the SDF's normals, Eikonal and curvature terms are plain
    finite differences of field values, so they train through it."""
    field = sphere_field("cuda", "sdf", backend="tcnn")
    x = torch.rand(2048, 3, device="cuda") * 1.2 - 0.6
    x = x[x.norm(dim=-1) > 0.3]
    assert field.encoding.backend == "tcnn"
    torch.testing.assert_close(field.normals(x), F.normalize(x, dim=-1), atol=0.05, rtol=0)
    renderer = make_renderer(field, "auto", "cuda")
    o, d = turntable_cameras(2, height=24, width=24, device="cuda").rays()
    out = renderer.render(o, d, shading="lambertian")
    (out["rgb"].mean() + out["eikonal_loss"] + 1e-3 * out["curvature_loss"]).backward()
    grads = [p.grad for p in field.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
