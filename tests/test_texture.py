"""Textured mesh assets: UV atlas, albedo baking, seam fill and the .glb/.obj/.ply files (dreamnfsd.export.texture).

The albedo is analytic, ``x * 0.5 + 0.5``, so every texel and every vertex has a known right answer. The checks use
their own rasteriser and bilinear sampler, not the module's, so a shared mistake cannot pass unnoticed.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from dreamnfsd.export import texture as tex

SIZE = 256
REPO = Path(__file__).resolve().parents[1]


def albedo_fn(x: torch.Tensor) -> torch.Tensor:
    return (x * 0.5 + 0.5).clamp(0, 1)


def albedo_np(points: np.ndarray) -> np.ndarray:
    return np.clip(np.asarray(points, dtype=np.float64) * 0.5 + 0.5, 0.0, 1.0)


def bilinear(texture: np.ndarray, uv: np.ndarray, v_down: bool = False) -> np.ndarray:
    """Sample (S, S, C) ``texture`` at (N, 2) uv with clamp-to-edge bilinear filtering, texel centres at
    (i + 0.5) / S. v up from the bottom row (OBJ, trimesh), or ``v_down`` from the top row (glTF)."""
    size = texture.shape[0]
    x = uv[:, 0] * size - 0.5
    y = (uv[:, 1] if v_down else 1.0 - uv[:, 1]) * size - 0.5
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]

    def at(r, c):
        return texture[np.clip(r, 0, size - 1), np.clip(c, 0, size - 1)].astype(np.float64)

    top = (1 - fx) * at(y0, x0) + fx * at(y0, x0 + 1)
    bottom = (1 - fx) * at(y0 + 1, x0) + fx * at(y0 + 1, x0 + 1)
    return (1 - fy) * top + fy * bottom


def box_downsample(texture: np.ndarray) -> np.ndarray:
    """The next mip level: means of 2x2 blocks."""
    n = texture.shape[0] // 2
    return texture.reshape(n, 2, n, 2, -1).mean(axis=(1, 3))


def strict_coverage(uvs: np.ndarray, faces: np.ndarray, size: int) -> np.ndarray:
    """(size, size) int: how many UV triangles hold each texel centre strictly inside (a loop over triangles, each
    vectorised over its bounding box; independent of the module's rasteriser)."""
    count = np.zeros((size, size), dtype=np.int64)
    px = np.stack([uvs[:, 0] * size - 0.5, (1.0 - uvs[:, 1]) * size - 0.5], axis=-1)
    for a, b, c in px[faces]:
        lo = np.maximum(np.floor(np.minimum(np.minimum(a, b), c)).astype(int), 0)
        hi = np.minimum(np.ceil(np.maximum(np.maximum(a, b), c)).astype(int), size - 1)
        cols, rows = np.meshgrid(np.arange(lo[0], hi[0] + 1), np.arange(lo[1], hi[1] + 1))
        p = np.stack([cols, rows], axis=-1).astype(np.float64)
        area = (b - a)[0] * (c - a)[1] - (b - a)[1] * (c - a)[0]
        s = ((p - a)[..., 0] * (c - a)[1] - (p - a)[..., 1] * (c - a)[0]) / area
        t = ((b - a)[0] * (p - a)[..., 1] - (b - a)[1] * (p - a)[..., 0]) / area
        # Strictly inside: centres on a shared edge belong to both neighbours and are no overlap.
        inside = (s > 1e-9) & (t > 1e-9) & (1.0 - s - t > 1e-9)
        count[rows[inside], cols[inside]] += 1
    return count


def uv_signed_area(uvs: np.ndarray, faces: np.ndarray) -> np.ndarray:
    a, b, c = uvs[faces[:, 0]], uvs[faces[:, 1]], uvs[faces[:, 2]]
    return 0.5 * ((b - a)[:, 0] * (c - a)[:, 1] - (b - a)[:, 1] * (c - a)[:, 0])


def chart_labels(faces: np.ndarray, n_vertices: int) -> np.ndarray:
    """(F,) chart of each face: UV charts share no vertices (xatlas splits seams), so charts are the connected
    components of the re-indexed mesh."""
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]]])
    labels = trimesh.graph.connected_component_labels(edges, node_count=n_vertices)
    return labels[faces[:, 0]]


def coloured_icosphere() -> trimesh.Trimesh:
    mesh = trimesh.creation.icosphere(subdivisions=3)
    colors = (albedo_np(mesh.vertices) * 255).round().astype(np.uint8)
    colors = np.concatenate([colors, np.full((len(colors), 1), 255, np.uint8)], axis=1)
    return trimesh.Trimesh(mesh.vertices, mesh.faces, vertex_normals=mesh.vertex_normals, vertex_colors=colors)


@pytest.fixture(scope="module", params=["icosphere", "box"])
def baked(request):
    mesh = trimesh.creation.icosphere(subdivisions=3) if request.param == "icosphere" else trimesh.creation.box()
    vertices, faces, uvs = tex.unwrap(mesh.vertices, mesh.faces, SIZE)
    texture = tex.bake_albedo(vertices, faces, uvs, albedo_fn, SIZE)
    return request.param, vertices, faces, uvs, texture


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    mesh = coloured_icosphere()
    out = tmp_path_factory.mktemp("textured")
    return mesh, tex.write_textured_meshes(mesh, albedo_fn, out, texture_size=SIZE)


# ------------------------------------------------------------------------------------------------------- UV atlas


def test_uv_atlas_in_range_oriented_and_without_overlap(baked):
    name, vertices, faces, uvs, _ = baked
    assert uvs.shape == (len(vertices), 2) and faces.shape[1] == 3
    assert uvs.min() >= 0.0 and uvs.max() <= 1.0
    area = uv_signed_area(uvs, faces)
    assert (np.abs(area) > 0).all(), "degenerate UV triangles"
    # Each chart is flattened without folds: one orientation per chart (a chart may be mirrored as a whole).
    labels = chart_labels(faces, len(vertices))
    for chart in np.unique(labels):
        signs = np.sign(area[labels == chart])
        assert (signs == signs[0]).all(), f"{name}: chart {chart} folds over itself"
    count = strict_coverage(uvs, faces, SIZE)
    assert int((count > 1).sum()) == 0, f"{name}: texels inside two UV triangles"
    coverage = float((count > 0).mean())
    assert coverage > 0.3, f"{name}: only {coverage:.0%} of the texture is used"


def test_unwrap_keeps_the_surface(baked):
    # The re-indexed mesh is the same surface: same faces in the same order, vertices copied, not moved.
    name, vertices, faces, _, _ = baked
    original = trimesh.creation.icosphere(subdivisions=3) if name == "icosphere" else trimesh.creation.box()
    assert len(faces) == len(original.faces)
    np.testing.assert_allclose(vertices[faces], np.asarray(original.vertices)[original.faces], atol=1e-6)


# ---------------------------------------------------------------------------------------------------------- bake


def test_texture_matches_albedo_at_vertices(baked):
    name, vertices, faces, uvs, texture = baked
    assert texture.shape == (SIZE, SIZE, 3) and texture.dtype == np.float32
    # The albedo is linear in 3D and each UV triangle maps affinely to 3D, so bilinear lookups inside one triangle
    # are exact; at a vertex the four texels read belong to neighbouring triangles (or to the seam ring baked at the
    # closest surface point), off by at most slope 0.5 x ~1.5 texels x texel size (~0.02 units at 256 px on a unit
    # sphere) = 0.015; measured 0.004. 0.03 leaves room for other atlases; a flipped v gives errors near 1. (A half
    # texel shift moves a linear albedo by only ~0.005 here: the texel-centre test below catches that.)
    err = np.abs(bilinear(texture, uvs) - albedo_np(vertices)).max()
    assert err < 0.03, f"{name}: max error {err:.4f} at vertex UVs"


def test_texel_inside_a_triangle_is_the_albedo_of_its_point(baked):
    name, vertices, faces, uvs, texture = baked
    face = int(np.argmax(np.abs(uv_signed_area(uvs, faces))))
    corners = uvs[faces[face]]
    centroid = corners.mean(axis=0)
    col, row = int(centroid[0] * SIZE), int((1.0 - centroid[1]) * SIZE)
    centre = np.array([(col + 0.5) / SIZE, 1.0 - (row + 0.5) / SIZE])
    # Barycentric coordinates of the texel centre in the UV triangle, then its point on the 3D triangle.
    m = np.stack([corners[1] - corners[0], corners[2] - corners[0]], axis=1)
    s, t = np.linalg.solve(m, centre - corners[0])
    assert min(s, t, 1 - s - t) > 0, "the texel centre is not inside the triangle"
    point = np.array([1 - s - t, s, t]) @ vertices[faces[face]]
    np.testing.assert_allclose(texture[row, col], albedo_np(point), atol=1e-5, err_msg=name)


def test_seam_fill_leaves_no_empty_texel_and_mips_stay_right(baked):
    name, vertices, faces, uvs, texture = baked
    assert np.isfinite(texture).all() and texture.min() >= 0.0 and texture.max() <= 1.0
    # Unfilled texels would be black; on these shapes every albedo has r + g + b >= 1.5 - 0.5 * sqrt(3) > 0.6.
    assert texture.sum(-1).min() > 0.6, f"{name}: dark texels left in the texture"
    # Mip levels average texels outside the charts too: with the fill they continue each chart, so a 2x2 level
    # still matches (a texel there spans twice the surface, twice the vertex tolerance), and a 4x4 one roughly.
    reference = albedo_np(vertices)
    mip1 = box_downsample(texture)
    assert np.abs(bilinear(mip1, uvs) - reference).max() < 0.06, name
    assert np.abs(bilinear(box_downsample(mip1), uvs) - reference).max() < 0.12, name


def test_fill_empty_texels_fills_everything_and_keeps_known_texels():
    rng = np.random.default_rng(0)
    texture = np.full((37, 50, 3), np.nan, dtype=np.float32)  # odd sizes: pull-push pads to a power of two
    known = np.zeros((37, 50), dtype=bool)
    known[5:9, 7:12] = known[30, 45] = True
    texture[known] = rng.random((int(known.sum()), 3), dtype=np.float32)
    filled = tex.fill_empty_texels(texture, known, dilate_steps=2)
    assert np.isfinite(filled).all()
    np.testing.assert_array_equal(filled[known], texture[known])
    assert filled.min() >= texture[known].min() and filled.max() <= texture[known].max()  # means, never beyond


def test_bake_refuses_a_wrong_albedo_answer():
    mesh = trimesh.creation.box()
    vertices, faces, uvs = tex.unwrap(mesh.vertices, mesh.faces, 64)
    with pytest.raises(ValueError, match="albedo_fn"):
        tex.bake_albedo(vertices, faces, uvs, lambda x: x[:, :2], 64)
    with pytest.raises(ValueError, match="NaN"):
        tex.bake_albedo(vertices, faces, uvs, lambda x: x * float("nan"), 64)


def test_many_charts_in_a_small_texture_still_unwrap_with_narrower_gaps():
    """120 separate square faces need 120 charts: with the default 4-texel gaps they overflow a 64^2 square (the
    error a rough mesh at export.texture_size=128 met), so the gaps narrow instead of the export failing."""
    boxes = [
        trimesh.creation.box((0.05, 0.05, 0.05)).apply_translation((i % 5 * 0.1, i // 5 * 0.1, 0)) for i in range(20)
    ]
    mesh = trimesh.util.concatenate(boxes)
    vmapping, faces, uvs = tex.unwrap_indexed(mesh.vertices, mesh.faces, 64)
    assert faces.shape == mesh.faces.shape and np.all((uvs >= 0) & (uvs <= 1))
    assert np.allclose(mesh.vertices[vmapping][faces], mesh.vertices[mesh.faces])  # the same surface


def test_charts_that_cannot_fit_even_1_texel_apart_are_one_line_naming_the_texture_size():
    boxes = [trimesh.creation.box((0.05, 0.05, 0.05)).apply_translation((i * 0.1, 0, 0)) for i in range(60)]
    mesh = trimesh.util.concatenate(boxes)  # 360 separate faces: 360 charts, too many for 16^2 texels
    with pytest.raises(tex.TextureFitError, match=r"^export\.texture_size: the mesh's \d+ UV charts do not fit"):
        tex.unwrap_indexed(mesh.vertices, mesh.faces, 16)


def test_unwrap_and_bake_are_deterministic():
    mesh = trimesh.creation.icosphere(subdivisions=3)
    runs = []
    for _ in range(2):
        vertices, faces, uvs = tex.unwrap(mesh.vertices, mesh.faces, SIZE)
        runs.append((vertices, faces, uvs, tex.bake_albedo(vertices, faces, uvs, albedo_fn, SIZE)))
    for a, b in zip(*runs):
        assert a.tobytes() == b.tobytes()


# --------------------------------------------------------------------------------------------------------- files


def read_glb(path: Path) -> tuple[dict, bytes]:
    data = path.read_bytes()
    magic, version, length = struct.unpack_from("<4sII", data, 0)
    assert (magic, version, length) == (b"glTF", 2, len(data))
    json_length, json_type = struct.unpack_from("<I4s", data, 12)
    assert json_type == b"JSON"
    bin_start = 20 + json_length
    bin_length, bin_type = struct.unpack_from("<I4s", data, bin_start)
    assert bin_type == b"BIN\x00"
    return json.loads(data[20:bin_start]), data[bin_start + 8 : bin_start + 8 + bin_length]


def glb_accessor(gltf: dict, binary: bytes, index: int) -> np.ndarray:
    accessor = gltf["accessors"][index]
    view = gltf["bufferViews"][accessor["bufferView"]]
    assert accessor["componentType"] == 5126 and "byteStride" not in view  # tightly packed float32
    width = {"VEC2": 2, "VEC3": 3}[accessor["type"]]
    start = view.get("byteOffset", 0) + accessor.get("byteOffset", 0)
    return np.frombuffer(binary, np.float32, accessor["count"] * width, start).reshape(-1, width)


def test_glb_texcoords_follow_gltf_convention(written):
    # Read the .glb by hand (no trimesh): glTF's uv origin is the image's top-left, so sampling the embedded image
    # with v downwards at TEXCOORD_0 must give the albedo at POSITION.
    _, paths = written
    gltf, binary = read_glb(paths["glb"])
    (primitive,) = gltf["meshes"][0]["primitives"]
    positions = glb_accessor(gltf, binary, primitive["attributes"]["POSITION"])
    texcoords = glb_accessor(gltf, binary, primitive["attributes"]["TEXCOORD_0"])
    material = gltf["materials"][primitive["material"]]["pbrMetallicRoughness"]
    image = gltf["images"][gltf["textures"][material["baseColorTexture"]["index"]]["source"]]
    view = gltf["bufferViews"][image["bufferView"]]
    start = view.get("byteOffset", 0)
    texture = np.asarray(Image.open(BytesIO(binary[start : start + view["byteLength"]])).convert("RGB")) / 255.0
    # 0.03 as for the baked texture, plus 8-bit rounding (0.002).
    assert np.abs(bilinear(texture, texcoords, v_down=True) - albedo_np(positions)).max() < 0.032


def test_glb_reloads_with_pbr_texture_uvs_and_normals(written):
    _, paths = written
    scene = trimesh.load(paths["glb"])
    (geometry,) = scene.geometry.values()
    material = geometry.visual.material
    assert isinstance(material, trimesh.visual.material.PBRMaterial)
    assert material.baseColorTexture is not None and material.baseColorTexture.size == (SIZE, SIZE)
    assert material.metallicFactor == 0.0
    uv = np.asarray(geometry.visual.uv)
    assert uv.shape == (len(geometry.vertices), 2)
    texture = np.asarray(material.baseColorTexture.convert("RGB")) / 255.0
    assert np.abs(bilinear(texture, uv) - albedo_np(geometry.vertices)).max() < 0.032
    # Smooth normals made it through the vertex splits: on a sphere they point along the position.
    radial = geometry.vertices / np.linalg.norm(geometry.vertices, axis=1, keepdims=True)
    assert ((geometry.vertex_normals * radial).sum(1) > 0.99).all()


def test_obj_reloads_with_its_texture_through_the_mtl(written):
    _, paths = written
    assert paths["obj"].parent == paths["mtl"].parent == paths["png"].parent
    assert paths["png"].name == "texture.png" and paths["mtl"].name == "mesh.mtl"
    assert "mtllib mesh.mtl" in paths["obj"].read_text().splitlines()
    assert "map_Kd texture.png" in paths["mtl"].read_text().splitlines()
    mesh = trimesh.load(paths["obj"], process=False)
    image = mesh.visual.material.image
    assert image is not None and image.size == (SIZE, SIZE)
    uv = np.asarray(mesh.visual.uv)
    assert uv.shape == (len(mesh.vertices), 2)
    texture = np.asarray(image.convert("RGB")) / 255.0
    assert np.abs(bilinear(texture, uv) - albedo_np(mesh.vertices)).max() < 0.032
    assert sum(line.startswith("vn ") for line in paths["obj"].read_text().splitlines()) == len(mesh.vertices)
    radial = mesh.vertices / np.linalg.norm(mesh.vertices, axis=1, keepdims=True)
    assert ((mesh.vertex_normals * radial).sum(1) > 0.99).all()


def test_ply_keeps_vertex_colours_and_normals(written):
    source, paths = written
    header = paths["ply"].read_bytes().split(b"end_header")[0].decode()
    assert "property float nx" in header and "property uchar red" in header
    mesh = trimesh.load(paths["ply"], process=False)
    np.testing.assert_array_equal(mesh.visual.vertex_colors, source.visual.vertex_colors)
    np.testing.assert_allclose(mesh.vertex_normals, source.vertex_normals, atol=1e-6)


def test_no_temp_files_left(written):
    _, paths = written
    folder = paths["glb"].parent
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in paths.values())


def test_missing_texture_raises():
    mesh = trimesh.creation.box()
    with pytest.raises(tex.TextureExportError, match="textured material"):
        tex.check_glb(trimesh.exchange.gltf.export_glb(mesh, include_normals=True), len(mesh.vertices), 64)
    vertices, faces, uvs = tex.unwrap(mesh.vertices, mesh.faces, 64)
    textured = tex.textured_trimesh(vertices, faces, uvs, np.full((64, 64, 3), 0.5))
    glb = trimesh.exchange.gltf.export_glb(textured, include_normals=True)
    tex.check_glb(glb, len(vertices), 64)
    with pytest.raises(tex.TextureExportError, match="expected 128"):
        tex.check_glb(glb, len(vertices), 128)
    with pytest.raises(ValueError, match="texture"):
        tex.textured_trimesh(vertices, faces, uvs, np.full((64, 32, 3), 0.5))


def test_khronos_gltf_validator_finds_no_errors(written):
    node = shutil.which("node")
    if node is None:
        pytest.skip("node not found: install Node.js to run the Khronos glTF validator")
    if not (REPO / "node_modules" / "gltf-validator").is_dir():
        pytest.skip("the Khronos glTF validator is not installed: run `npm ci` in the repo root")
    _, paths = written
    run = subprocess.run(
        [node, str(REPO / "tests" / "gltf_validate.mjs"), str(paths["glb"])],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    issues = report["issues"]
    assert issues["numErrors"] == 0, json.dumps(issues["messages"], indent=1)
    assert report["info"]["materialCount"] == 1 and report["info"]["hasTextures"]
