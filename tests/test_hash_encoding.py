"""Hash encoding: layout, exact interpolation at vertices, dense vs hashed indexing, gradients, backend choice."""

from __future__ import annotations

import logging

import pytest
import torch

from dreamnfsd.models.encodings import (
    PRIMES,
    EncodingBackendMismatch,
    HashEncoding,
    HashEncodingConfig,
    _HashGridFn,
    encode_levels_autograd,
    level_corners,
    level_layout,
    level_rows,
    resolve_encoding_backend,
    tcnn_available,
)

TINY = HashEncodingConfig(n_levels=4, log2_hashmap_size=10, base_resolution=4, per_level_scale=2)


def make(cfg: HashEncodingConfig = TINY, seed: int = 0) -> HashEncoding:
    torch.manual_seed(seed)
    enc = HashEncoding(cfg)
    with torch.no_grad():
        for t in enc.tables:
            t.normal_()  # large values so interpolation errors would show
    return enc


def hash_reference(ijk: torch.Tensor, log2_size: int) -> torch.Tensor:
    """Instant-NGP spatial hash in exact int64 arithmetic (uint32 wrap emulated), int (P, 3) -> (P,)."""
    h = (ijk[:, 0] * PRIMES[0]) ^ (ijk[:, 1] * PRIMES[1]) ^ (ijk[:, 2] * PRIMES[2])
    return (h & 0xFFFFFFFF) % (1 << log2_size)


def vertex_row(ijk: torch.Tensor, res: int, dense: bool, log2_size: int) -> torch.Tensor:
    r1 = res + 1
    return ijk[:, 0] + ijk[:, 1] * r1 + ijk[:, 2] * r1 * r1 if dense else hash_reference(ijk, log2_size)


def test_layout_defaults_and_shapes():
    enc = HashEncoding(HashEncodingConfig())
    assert enc.out_dim == 32
    levels = enc.levels
    assert [lv.res for lv in levels[:3]] == [16, 23, 33]
    # Coarse levels whose (res+1)^3 vertices fit 2^19 rows are dense, the rest hashed.
    assert [lv.dense for lv in levels] == [(lv.res + 1) ** 3 <= 2**19 for lv in levels]
    assert levels[0].dense and not levels[-1].dense
    assert [t.shape[0] for t in enc.tables] == [level_rows(lv) for lv in levels]
    assert max(t.shape[0] for t in enc.tables) == 2**19
    x = torch.rand(100, 3)
    assert enc(x).shape == (100, 32)
    with torch.no_grad():
        assert enc(x).shape == (100, 32)


def test_levels_config_is_respected():
    cfg = HashEncodingConfig(
        n_levels=5, n_features_per_level=4, log2_hashmap_size=12, base_resolution=8, per_level_scale=1.5
    )
    enc = HashEncoding(cfg)
    assert [lv.res for lv in enc.levels] == [8, 12, 18, 27, 40]
    assert [lv.dense for lv in enc.levels] == [True, True, False, False, False]  # 13^3 = 2197 <= 4096 < 19^3
    assert enc(torch.rand(7, 3)).shape == (7, 20)


@pytest.mark.parametrize("level", [0, 1, 2, 3])
def test_exact_at_grid_vertices(level):
    """At a vertex x = ijk / res the level's output is that vertex's table row (dense or hashed)."""
    enc = make()
    lv = enc.levels[level]
    assert lv.dense == (level < 2)  # res 4, 8 dense; 16, 32 hashed with 2^10 rows
    gen = torch.Generator().manual_seed(level)
    ijk = torch.randint(0, lv.res + 1, (64, 3), generator=gen)
    ijk[0] = lv.res  # the x = 1 corner (the far face is included)
    ijk[1] = 0
    x = ijk.float() / lv.res
    with torch.no_grad():
        out = enc(x)[:, 2 * level : 2 * level + 2]
    rows = vertex_row(ijk, lv.res, lv.dense, lv.log2_size)
    torch.testing.assert_close(out, enc.tables[level][rows], rtol=0, atol=1e-5)


def test_trilinear_between_vertices():
    """Inside a cell the output is the trilinear blend of the 8 corner rows."""
    enc = make()
    lv = enc.levels[2]
    ijk = torch.tensor([[3, 7, 11]])
    w = torch.tensor([[0.25, 0.6, 0.9]])
    x = (ijk + w) / lv.res
    expected = torch.zeros(1, 2)
    for c in range(8):
        b = torch.tensor([[c & 1, (c >> 1) & 1, (c >> 2) & 1]])
        weight = torch.where(b == 1, w, 1 - w).prod(-1, keepdim=True)
        expected += weight * enc.tables[2][vertex_row(ijk + b, lv.res, lv.dense, lv.log2_size)]
    with torch.no_grad():
        torch.testing.assert_close(enc(x)[:, 4:6], expected, rtol=0, atol=1e-5)


def test_dense_levels_have_no_collisions_and_hashed_use_the_primes():
    cfg = HashEncodingConfig(n_levels=3, log2_hashmap_size=12, base_resolution=6, per_level_scale=2.5)
    levels = level_layout(cfg)
    assert [(lv.res, lv.dense) for lv in levels] == [(6, True), (15, True), (37, False)]
    # Dense: every vertex of the level gets its own row, covering the table exactly.
    r = levels[1].res
    g = torch.arange(r + 1)
    verts = torch.stack(torch.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
    x = verts.float() / r
    idx, _ = level_corners(x, r, True, 12)
    lower = idx[0][(verts < r).all(-1)]  # corner 0 of each cell is that cell's own vertex
    assert lower.unique().numel() == lower.numel()
    assert int(max(i.max() for i in idx)) == (r + 1) ** 3 - 1
    # Hashed: int32 arithmetic (wrapping like uint32) equals the exact hash, also for large coordinates.
    big = 4000
    gen = torch.Generator().manual_seed(0)
    cells = torch.randint(0, big, (2000, 3), generator=gen)
    x = (cells.double() + 0.5) / big
    idx, _ = level_corners(x.float(), big, False, 12)
    for c in range(8):
        b = torch.tensor([c & 1, (c >> 1) & 1, (c >> 2) & 1])
        assert torch.equal(idx[c], hash_reference(cells + b, 12))


def test_custom_backward_matches_autograd():
    enc = make()
    x = torch.rand(500, 3)
    g_out = torch.randn(500, enc.out_dim)
    tables = list(enc.tables)
    fast = _HashGridFn.apply(x, enc.levels, 1, *tables)
    grads_fast = torch.autograd.grad(fast, tables, g_out)
    plain = encode_levels_autograd(x, tables, enc.levels)
    grads_plain = torch.autograd.grad(plain, tables, g_out)
    torch.testing.assert_close(fast, plain)
    for a, b in zip(grads_fast, grads_plain):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_gradcheck_tables_and_inputs():
    """Finite-difference check (float64) of the table gradient (custom backward) and the input gradient."""
    enc = HashEncoding(HashEncodingConfig(n_levels=2, log2_hashmap_size=6, base_resolution=2, per_level_scale=3))
    tables = [t.detach().double().normal_().requires_grad_(True) for t in enc.tables]
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(6, 3, generator=gen, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda *t: _HashGridFn.apply(x, enc.levels, 1, *t), tables)
    # Away from cell faces the encoding is smooth in x: points at cell fractions 0.2..0.8 at both levels.
    xg = ((torch.tensor([[0, 1, 1], [1, 0, 0]]) + 0.2 + 0.6 * torch.rand(2, 3, generator=gen)) / 6).double()
    xg.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: encode_levels_autograd(p, tables, enc.levels), (xg,))


def test_module_paths_agree():
    """no_grad (inference), custom-backward and autograd-in-x paths give the same encoding."""
    enc = make()
    x = torch.rand(200, 3)
    with torch.no_grad():
        a = enc(x)
    b = enc(x)
    c = enc(x.clone().requires_grad_(True))
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c)
    b.sum().backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in enc.tables)


def test_backend_is_fixed_at_construction_and_logged_once(caplog):
    with caplog.at_level(logging.INFO, logger="dreamnfsd.models.encodings"):
        enc = HashEncoding(TINY)
        enc(torch.rand(4, 3))
        enc(torch.rand(4, 3))
    msgs = [r.getMessage() for r in caplog.records if "HashEncoding backend" in r.getMessage()]
    assert len(msgs) == 1 and "torch" in msgs[0] and enc.backend == "torch" and enc.tcnn is None
    assert resolve_encoding_backend("auto", "cpu") == "torch"  # CPU fields never get tcnn parameters
    if not tcnn_available():
        with pytest.raises(RuntimeError, match="tcnn needs tinycudann and a CUDA device; use backend=torch"):
            HashEncoding(HashEncodingConfig(**{**TINY.__dict__, "backend": "tcnn"}), "cuda")
    with pytest.raises(ValueError, match="auto, torch, tcnn"):
        HashEncoding(HashEncodingConfig(backend="cuda"))


def recorded_tcnn_field_state(field) -> dict:
    """A field state as a CUDA run with tiny-cuda-nn saves it: tcnn's flat parameter vector instead of the tables,
    and the backend recorded beside it."""
    state = {k: v for k, v in field.state_dict().items() if not k.startswith("encoding.")}
    state["encoding.tcnn.params"] = torch.zeros(sum(t.numel() for t in field.encoding.tables))
    state["encoding._extra_state"] = {"backend": "tcnn"}
    return state


def test_checkpoint_records_the_backend_and_the_other_layout_is_refused_in_one_line(tmp_path):
    from dreamnfsd.models.field import FieldConfig, build_field

    field = build_field(FieldConfig(kind="sdf", encoding=TINY, hidden_dim=16), "cpu")
    state = field.state_dict()
    assert state["encoding._extra_state"] == {"backend": "torch"}
    # A state dict from before the backend was recorded is a torch one and loads as it always did.
    legacy = {k: v for k, v in state.items() if k != "encoding._extra_state"}
    fresh = build_field(FieldConfig(kind="sdf", encoding=TINY, hidden_dim=16), "cpu")
    fresh.load_state_dict(legacy)
    assert all(torch.equal(a, b) for a, b in zip(fresh.encoding.tables, field.encoding.tables))
    # A tcnn checkpoint on a machine that builds torch tables: refused, never silently untrained tables.
    path = tmp_path / "tcnn.pt"
    torch.save({"field": recorded_tcnn_field_state(field)}, path)
    recorded = torch.load(path, weights_only=False)["field"]
    with pytest.raises(EncodingBackendMismatch) as err:
        fresh.load_state_dict(recorded)
    message = str(err.value)
    assert "\n" not in message and "holds tcnn" in message and "tiny-cuda-nn" in message
    assert all(torch.equal(a, b) for a, b in zip(fresh.encoding.tables, field.encoding.tables))  # untouched
