"""The interactive 3D view: meshes as plotly ``Mesh3d`` traces, with plotly.js itself inlined from the plotly wheel.

The page holds plotly.js and the figure (vertex and index arrays as base64 typed arrays, which plotly.js decodes)
gzipped in inert ``<script>`` blocks, and a short boot script unpacks and draws them: 4.8 MB of plotly.js weigh
2 MB that way. Readiness is exposed to tests and to anyone scripting the page: ``document.body.dataset.viewerReady
= "1"`` once plotly's promise for the plot has resolved and a frame has been drawn, ``data-viewer-error`` with the
reason otherwise (no WebGL, no DecompressionStream, plotly.js failed).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass

import numpy as np

from dreamnfsd.app.report.page import Html, Weights, esc, packed

RUN_MAX_FACES = 20_000  # a run's own mesh: enough for its detail in a few hundred kB
MANY_TOTAL_FACES = 60_000  # a sweep's or the benchmark's page holds every run's mesh: this many faces in all,
MANY_FACES_RANGE = (1_000, 5_000)  # but each mesh keeps at least the first, and needs no more than the second
LIGHTING = {"ambient": 0.45, "diffuse": 0.75, "specular": 0.15, "roughness": 0.6, "fresnel": 0.1}
LIGHT_POSITION = {"x": 1000, "y": -600, "z": 1600}


@dataclass
class ViewerMesh:
    """A mesh for the viewer: vertices (V, 3) float32, faces (F, 3) int32, colours (V, 3) uint8 or None."""

    name: str
    vertices: np.ndarray
    faces: np.ndarray
    colours: np.ndarray | None = None
    colour: str = "#b0b0b0"  # one colour for the whole mesh when it has no vertex colours


def faces_each(count: int) -> int:
    """The face budget of each of ``count`` meshes on one page (a primitive reads well from 1,000 faces)."""
    low, high = MANY_FACES_RANGE
    return int(min(high, max(low, MANY_TOTAL_FACES // max(count, 1))))


def simplify(mesh: ViewerMesh, max_faces: int) -> ViewerMesh:
    """Quadric decimation to at most ``max_faces`` faces; vertex colours follow from the nearest original vertex."""
    from dreamnfsd.export.mesh import decimate

    if len(mesh.faces) <= max_faces:
        return mesh
    vertices, faces = decimate(mesh.vertices, mesh.faces, max_faces)
    colours = None
    if mesh.colours is not None:
        from scipy.spatial import cKDTree

        _, nearest = cKDTree(mesh.vertices).query(vertices)
        colours = mesh.colours[nearest]
    return ViewerMesh(mesh.name, vertices, faces, colours, mesh.colour)


def from_trimesh(mesh, name: str) -> ViewerMesh:
    """A ``trimesh.Trimesh`` (vertex colours kept when it has them, e.g. a run's ``mesh.ply``)."""
    colours = None
    visual = getattr(mesh, "visual", None)
    if visual is not None and getattr(visual, "kind", None) == "vertex":
        colours = np.asarray(visual.vertex_colors)[:, :3].astype(np.uint8)
    return ViewerMesh(name, np.asarray(mesh.vertices), np.asarray(mesh.faces), colours)


def hex_colour(rgb) -> str:
    """(r, g, b) in 0..255 -> "#rrggbb"."""
    r, g, b = (int(c) for c in rgb)
    return f"#{r:02x}{g:02x}{b:02x}"


def _trace(mesh: ViewerMesh):
    import plotly.graph_objects as go

    faces = np.asarray(mesh.faces, dtype=np.int32)
    vertices = np.asarray(mesh.vertices, dtype=np.float32)
    extra: dict[str, object] = {"color": mesh.colour}
    if mesh.colours is not None:
        extra = {"vertexcolor": [hex_colour(c) for c in mesh.colours.tolist()]}
    return go.Mesh3d(
        x=vertices[:, 0],
        y=vertices[:, 1],
        z=vertices[:, 2],
        i=faces[:, 0],
        j=faces[:, 1],
        k=faces[:, 2],
        name=mesh.name,
        flatshading=False,
        lighting=LIGHTING,
        lightposition=LIGHT_POSITION,
        hoverinfo="skip",
        **extra,
    )


def figure_json(meshes: list[ViewerMesh], height: int = 520, bound: float | None = None) -> str:
    """The plotly figure as JSON: one trace per mesh (the page shows one at a time), z up, axes hidden.

    ``bound``: a fixed cube [-bound, bound]^3 for every mesh (so that a switch keeps the scale); None: each mesh's
    own extent.
    """
    import plotly.graph_objects as go

    axis: dict[str, object] = {"visible": False, "showspikes": False}
    if bound is not None:
        axis["range"] = [-bound, bound]
    scene = {
        "xaxis": axis,
        "yaxis": axis,
        "zaxis": axis,
        "aspectmode": "cube" if bound is not None else "data",
        "camera": {"eye": {"x": 1.35, "y": -1.35, "z": 0.9}, "up": {"x": 0, "y": 0, "z": 1}},
        "bgcolor": "#ffffff",
    }
    layout = {
        "template": "none",
        "height": height,
        "margin": {"l": 0, "r": 0, "t": 0, "b": 0},
        "paper_bgcolor": "#ffffff",
        "showlegend": False,
        "scene": scene,
    }
    # The JSON goes into a <script> element: plotly's encoder escapes "<" and "/", so no "</script>" can appear.
    return go.Figure([_trace(m) for m in meshes], layout).to_json()


def viewer_block(figure: str, weights: Weights, choices: list[str] | None = None, note: str = "") -> Html:
    """The viewer's place in the page: its div, the figure data, a picker when there are ``choices`` (shown by the
    boot script: without JavaScript there is nothing to pick), and a note for readers without JavaScript."""
    data = weights.add("3D mesh data (gzip)", packed(figure.encode(), "viewer-data"))
    picker = ""
    if choices:
        options = "".join(f'<option value="{i}">{esc(c)}</option>' for i, c in enumerate(choices))
        picker = f'<p id="viewer-picker" hidden><label>Mesh: <select id="viewer-pick">{options}</select></label></p>'
    return Html(
        f'{picker}<div id="viewer" role="img" aria-label="interactive 3D view of the mesh"></div>'
        f'<p class="viewer-note" id="viewer-note">{esc(note)} Drag to rotate, scroll to zoom.</p>'
        '<noscript><p class="viewer-note">The 3D view needs JavaScript; everything else on this page does not.'
        f"</p></noscript>{data}"
    )


def show_button(index: int, label: str = "show in 3D") -> Html:
    """A button that puts mesh ``index`` of the picker into the view (hidden until the boot script runs)."""
    return Html(f'<button type="button" class="show-mesh" data-show-mesh="{index}" hidden>{esc(label)}</button>')


# Unpacks plotly.js and the figure (#plotly-js, #viewer-data), draws the figure's first trace into #viewer and
# reports the outcome on <body> (data-viewer-ready / data-viewer-error). WebGL is probed first: without it plotly
# would only show its own notice. A picker (#viewer-pick) and buttons (data-show-mesh) switch the trace shown.
BOOT_JS = """
(function () {
  var body = document.body, note = document.getElementById("viewer-note");
  function fail(why) {
    why = String((why && why.message) || why || "unknown error");
    body.dataset.viewerError = why;
    if (note) note.textContent = "The 3D view could not be drawn: " + why;
  }
  function unpack(id) {
    var bin = atob(document.getElementById(id).textContent), bytes = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    var stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
    return new Response(stream).text();
  }
  function draw(holder, spec, config) {
    var pick = document.getElementById("viewer-pick"), picker = document.getElementById("viewer-picker");
    function ready() {
      if (!holder.querySelector("canvas")) return fail("plotly drew no WebGL canvas");
      // Two frames: the first paints the WebGL scene, the second runs after it reached the screen.
      requestAnimationFrame(function () {
        requestAnimationFrame(function () { body.dataset.viewerReady = "1"; });
      });
    }
    function show(index) {
      body.dataset.viewerReady = "0";
      if (pick) pick.value = String(index);
      Plotly.react(holder, [spec.data[index]], spec.layout, config).then(ready, fail);
    }
    if (picker) picker.hidden = false;
    if (pick) pick.addEventListener("change", function () { show(+pick.value); });
    document.querySelectorAll("[data-show-mesh]").forEach(function (button) {
      button.hidden = false;
      button.addEventListener("click", function () {
        show(+button.dataset.showMesh);
        holder.scrollIntoView({behavior: "smooth", block: "center"});
      });
    });
    return Plotly.newPlot(holder, [spec.data[0]], spec.layout, config).then(ready);
  }
  try {
    var probe = document.createElement("canvas");
    if (!(probe.getContext("webgl") || probe.getContext("experimental-webgl"))) {
      return fail("this browser has no WebGL");
    }
    if (typeof DecompressionStream === "undefined") return fail("this browser has no DecompressionStream");
    Promise.all([unpack("plotly-js"), unpack("viewer-data")]).then(function (texts) {
      var script = document.createElement("script");
      script.text = texts[0];
      document.head.appendChild(script);  // runs at once: defines window.Plotly
      if (typeof Plotly === "undefined") throw new Error("plotly.js did not load");
      var config = {displaylogo: false, responsive: true, scrollZoom: true};
      return draw(document.getElementById("viewer"), JSON.parse(texts[1]), config);
    }).catch(fail);
  } catch (e) {
    fail(e);
  }
})();
"""


@functools.lru_cache(maxsize=1)
def _packed_plotly_js() -> Html:
    """Packed once per process (half a second): a sweep's report builds a page per job."""
    from plotly.offline import get_plotlyjs

    return packed(get_plotlyjs().encode(), "plotly-js")


def viewer_scripts(weights: Weights) -> Html:
    """plotly.js (from the installed plotly wheel, never a CDN) and the boot script, for the end of the page."""
    plotly_js = weights.add("plotly.js (gzip, 3D viewer)", _packed_plotly_js())
    boot = weights.add("viewer boot script", f"<script>{BOOT_JS}</script>")
    return Html(f"{plotly_js}\n{boot}")


def mesh_bound(meshes: list[ViewerMesh]) -> float:
    """Half the side of the smallest origin-centred cube holding every mesh."""
    return float(max(np.abs(m.vertices).max() for m in meshes if len(m.vertices)) * 1.05)


def json_for_script(data) -> str:
    """``data`` as JSON safe inside a ``<script type="application/json">``."""
    return json.dumps(data).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def meshes_section(meshes: list[ViewerMesh], weights: Weights, what: str, empty: str) -> tuple[Html, Html]:
    """A page's "Meshes" section with a picker over ``meshes`` (all on one scale) and the scripts it needs, or a
    note saying ``empty`` and no scripts."""
    if not meshes:
        return Html(f"<h2>Meshes</h2><p>{esc(empty)}</p>"), Html("")
    figure = figure_json(meshes, bound=mesh_bound(meshes))
    note = f"{len(meshes)} {what} meshes on one scale, at most {faces_each(len(meshes))} faces each."
    return Html("<h2>Meshes</h2>" + viewer_block(figure, weights, [m.name for m in meshes], note)), viewer_scripts(
        weights
    )
