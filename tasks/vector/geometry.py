"""Simplify and smooth the landslide polygons as one coverage: shared boundary points kept, every
polygon valid, no overlaps, holes kept, one polygon out for each polygon in.

The polygons are traced from the 10 m mask, so every edge follows the pixel grid. Two landslides
are different 4-connected objects, so they never share an edge: they touch at pixel corners only
(diagonal neighbours, an island in another's hole), and a polygon's hole may touch its own shell
at a corner. Those shared corners are the coverage's *nodes*.

:func:`simplify_coverage` cuts every ring at its nodes into edges and simplifies all edges together
with GEOS's topology-preserving Douglas-Peucker simplifier (``shapely.simplify(...,
preserve_topology=True)``, one call per group of edges whose bounding boxes meet, which gives the
same result as one call on all edges, :func:`_simplify_edges`): an edge keeps its end points (the
nodes, so polygons that touched still touch at the same points), no simplified edge crosses another
edge of the same or of another polygon, and a ring without nodes keeps at least 4 points. Every
vertex removed lies within ``tolerance_m`` of the simplified outline, so a polygon's boundary moves
by at most ``tolerance_m`` and its area changes by at most ``tolerance_m`` times its pixel-outline
perimeter (:func:`area_change_bound_m2`). The result is then checked (valid, non-empty, same number
of holes, no overlap with any neighbour, touching neighbours still touch); a polygon that fails
keeps its exact pixel outline, together with every polygon near it.

:func:`smooth_coverage` cuts corners (Chaikin: each segment is replaced by its points at 1/4 and
3/4) with the nodes held fixed, then applies the same checks; polygons that would become invalid
or overlap a neighbour keep their unsmoothed outline.

Memory: the whole run's polygons are held anyway (the landslides layer is one GeoDataFrame); the
edges, their index and the simplified copy are a few times the size of those coordinates.

Pure shapely and numpy: no GDAL.
"""

from __future__ import annotations

import logging
import math
import numbers
from dataclasses import dataclass

import numpy as np
import shapely
from shapely.geometry import LineString, MultiLineString, Polygon

from tasks.core import defaults
from tasks.core.errors import InputError

log = logging.getLogger(__name__)

# coordinates are compared on this grid (m) when looking for shared corners: the pixel corners of
# one grid, computed from block-window transforms, may differ in the last bits
_NODE_DECIMALS = 6
# relative slack on the tolerance: a point exactly tolerance_m from the simplified line may go
_TOLERANCE_RTOL = 1e-9
# an intersection of two output polygons larger than this (m2) is an overlap
OVERLAP_TOLERANCE_M2 = 1e-6


@dataclass(frozen=True)
class GeometryParams:
    """How the landslide polygons are drawn (``--simplify-m``, ``--smooth``).

    Attributes:
        simplify_m: Douglas-Peucker tolerance in metres (0 keeps the exact pixel outline); the
            outline moves by at most this much.
        smooth_iterations: Chaikin corner-cutting passes after simplification (0: none).
    """

    simplify_m: float = 0.0
    smooth_iterations: int = 0

    def __post_init__(self) -> None:
        v = self.simplify_m
        if not isinstance(v, numbers.Real) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
            raise InputError(f"simplify_m must be a finite distance in metres >= 0 (0 keeps the "
                             f"exact pixel outline), got {v!r}")
        n = self.smooth_iterations
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or not 0 <= n <= 4:
            raise InputError(f"smooth_iterations must be a whole number 0..4, got {n!r}")


def default_simplify_m(res_m: float) -> float:
    """Half the pixel diagonal, ``res_m * sqrt(2) / 2`` (7.07 m at 10 m): a staircase of single
    pixel steps becomes a straight line, a two-pixel step does not."""
    return float(res_m) * math.sqrt(2.0) / 2.0


def area_change_bound_m2(perimeter_px_m, tolerance_m: float):
    """The most a polygon's area can change when simplified with ``tolerance_m``: the outline moves
    by at most ``tolerance_m`` along its pixel-outline perimeter ``perimeter_px_m``."""
    return np.asarray(perimeter_px_m, dtype=np.float64) * float(tolerance_m)


def _rotated(c: np.ndarray, start: int) -> np.ndarray:
    """``c``'s rows starting at row ``start`` (negative: from the end), wrapping round: ``np.roll(c,
    -start, axis=0)`` without its per-call overhead (9,000 calls per 1,000 km2)."""
    return np.concatenate((c[start:], c[:start]))


def _rings(poly: Polygon) -> list[np.ndarray]:
    """The polygon's rings' coordinates (shell first), each without its closing point and without
    collinear vertices, starting at its smallest vertex (x, then y).

    So the edges, and their simplification, do not depend on where a ring happened to start or on
    the extra vertices that joining block parts across a seam leaves on straight runs: the result
    is the same for every ``--block-px``. Call it on oriented polygons (shell counter-clockwise,
    holes clockwise, ``shapely.orient_polygons``) for the same reason."""
    out = []
    for ring in (poly.exterior, *poly.interiors):
        c = np.asarray(ring.coords)[:-1, :2]
        d_in, d_out = c - _rotated(c, -1), _rotated(c, 1) - c
        turn = d_in[:, 0] * d_out[:, 1] - d_in[:, 1] * d_out[:, 0]  # exactly 0 on the pixel grid
        keep = np.abs(turn) > 1e-12 * np.hypot(*d_in.T) * np.hypot(*d_out.T)
        c = c[keep] if keep.sum() >= 3 else c
        key = np.round(c, _NODE_DECIMALS)
        start = int(np.lexsort((key[:, 1], key[:, 0]))[0])
        out.append(_rotated(c, start))
    return out


def _node_keys(rings: list[list[np.ndarray]]) -> set[tuple[float, float]]:
    """Corners that occur more than once among all ``rings`` (per polygon, its :func:`_rings`):
    the coverage's nodes."""
    pts = [np.round(c, _NODE_DECIMALS) for poly_rings in rings for c in poly_rings]
    if not pts:
        return set()
    allpts = np.concatenate(pts)
    uniq, counts = np.unique(allpts, axis=0, return_counts=True)
    return {(float(x), float(y)) for x, y in uniq[counts > 1]}


def _split_ring(coords: np.ndarray, nodes: set[tuple[float, float]]) -> list[np.ndarray]:
    """A ring (no closing point) as edges between its nodes, each an open (k, 2) array whose first
    and last points are nodes; a ring with no node is one closed array (first point repeated).

    A ring with one or two nodes gets its farthest vertex from the first node as an extra end
    point, so no ring is made of fewer than three edges (two edges could both collapse onto the
    segment between the same two nodes)."""
    keys = np.round(coords, _NODE_DECIMALS)
    at = [i for i, (x, y) in enumerate(keys) if (float(x), float(y)) in nodes]
    if not at:
        return [np.vstack([coords, coords[:1]])]
    first = min(at, key=lambda i: (keys[i, 0], keys[i, 1]))  # the smallest node: independent of
    coords, keys = _rotated(coords, first), _rotated(keys, first)  # the ring's start
    at = sorted((i - first) % len(coords) for i in at)
    if len(at) < 3:
        d = np.hypot(*(coords - coords[at[0]]).T)
        d[at] = -1.0
        at = sorted(set(at) | {int(np.argmax(d))})
    rolled = _rotated(coords, at[0])
    cuts = [i - at[0] for i in at] + [len(coords)]
    closed = np.vstack([rolled, rolled[:1]])
    return [closed[a:b + 1] for a, b in zip(cuts[:-1], cuts[1:])]


def _join_edges(edges: list[np.ndarray]) -> np.ndarray:
    """The ring (closed coordinates) of consecutive edges."""
    if len(edges) == 1:
        return edges[0]
    return np.vstack([edges[0]] + [e[1:] for e in edges[1:]])


def coverage_edges(polys: np.ndarray) -> list[list[list[np.ndarray]]]:
    """Per polygon (oriented, ``shapely.orient_polygons``), per ring, its edges between the
    coverage's nodes (each ring's coordinates taken once)."""
    rings = [_rings(p) for p in polys]
    nodes = _node_keys(rings)
    return [[_split_ring(c, nodes) for c in poly_rings] for poly_rings in rings]


def _rebuild(per_ring_edges: list[list[np.ndarray]]) -> Polygon:
    rings = [_join_edges(edges) for edges in per_ring_edges]
    return Polygon(rings[0], rings[1:])


def _bad_polygons(out: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Indices of output polygons that are invalid, empty, changed their number of holes, overlap
    another output polygon, or no longer touch a polygon they touched in ``ref``."""
    bad = ~shapely.is_valid(out) | shapely.is_empty(out) | (shapely.area(out) <= 0)
    bad |= shapely.get_num_interior_rings(out) != shapely.get_num_interior_rings(ref)
    tree = shapely.STRtree(out)
    i, j = tree.query(out, predicate="intersects")
    keep = i < j
    i, j = i[keep], j[keep]
    ok_pair = ~(bad[i] | bad[j])
    overl = np.zeros(len(i), dtype=bool)
    if ok_pair.any():
        overl[ok_pair] = shapely.area(shapely.intersection(out[i[ok_pair]], out[j[ok_pair]])) \
            > OVERLAP_TOLERANCE_M2
    bad[i[overl]] = True
    bad[j[overl]] = True
    ref_tree = shapely.STRtree(ref)
    ri, rj = ref_tree.query(ref, predicate="intersects")
    keep = ri < rj
    ri, rj = ri[keep], rj[keep]
    lost = ~shapely.intersects(out[ri], out[rj])
    bad[ri[lost]] = True
    bad[rj[lost]] = True
    return np.flatnonzero(bad)


def _near(polys: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``idx`` and every polygon whose bounding box meets theirs."""
    if len(idx) == 0:
        return idx
    tree = shapely.STRtree(polys)
    _, hits = tree.query(polys[idx], predicate=None)
    return np.union1d(idx, hits)


def _simplify_edges(edges: list[LineString], tolerance_m: float) -> list:
    """Every edge simplified with GEOS's topology-preserving Douglas-Peucker, as if all edges were
    one MultiLineString, in the given order.

    GEOS checks each candidate chord against the segments in the chord's envelope, and one call on
    a whole tile's edges took more than 10 minutes (benchmarks/README.md). So the edges are split
    into groups whose bounding boxes do not meet any other group's, and each group is one call. A
    simplified edge keeps a subset of its points, so it stays inside its bounding box and cannot
    meet an edge of another group: every check GEOS makes comes out the same, and so does the
    result, while each call only sees its neighbourhood.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    lines = np.asarray(edges, dtype=object)
    i, j = shapely.STRtree(lines).query(lines, predicate=None)  # bounding boxes that meet
    n_groups, group = connected_components(coo_matrix((np.ones(len(i)), (i, j)),
                                                      shape=(len(lines), len(lines))), directed=False)
    order = np.argsort(group, kind="stable")
    starts = np.searchsorted(group[order], np.arange(n_groups))
    members = np.split(order, starts[1:])
    simplified = shapely.simplify(np.array([MultiLineString(list(lines[m])) for m in members],
                                           dtype=object), tolerance_m, preserve_topology=True)
    out: list = [None] * len(lines)
    for m, g in zip(members, simplified):
        parts = shapely.get_parts(g)  # one edge: a LineString, not a MultiLineString
        if len(parts) != len(m):
            raise RuntimeError(f"simplify returned {len(parts)} edges for {len(m)}")
        for k, line in zip(m, parts):
            out[k] = line
    return out


def simplify_coverage(polys, tolerance_m: float) -> np.ndarray:
    """Douglas-Peucker simplification of a polygon coverage, shared corners kept (module docstring).

    Args:
        polys: (N,) Polygons that do not overlap (they may touch at points), e.g. pixel outlines.
        tolerance_m: the most any point of an outline may move, in the polygons' CRS units (0
            returns the input unchanged).

    Returns:
        (N,) valid Polygons in the same order, each with the same number of holes, pairwise
        without overlap; polygons that touched still touch.

    Raises:
        InputError: a negative or non-finite tolerance, or a geometry that is not a Polygon.
    """
    polys = np.asarray(polys, dtype=object)
    if not (math.isfinite(tolerance_m) and tolerance_m >= 0):
        raise InputError(f"tolerance_m must be a finite distance >= 0, got {tolerance_m!r}")
    if tolerance_m == 0 or len(polys) == 0:
        return polys.copy()
    if set(shapely.get_type_id(polys).tolist()) - {3}:
        raise InputError("simplify_coverage takes Polygons only")
    polys = shapely.orient_polygons(polys)
    edges = coverage_edges(polys)
    flat = [e for rings in edges for ring in rings for e in ring]
    # The default, half the pixel diagonal, is exactly the distance of a one-pixel stair corner from
    # the stair's chord: allow for rounding so such corners go whatever the last bits say.
    lines = _simplify_edges([LineString(e) for e in flat], tolerance_m * (1.0 + _TOLERANCE_RTOL))
    parts = iter(shapely.get_coordinates(g) for g in lines)
    out = np.array([_rebuild([[next(parts) for _ in ring] for ring in rings]) for rings in edges],
                   dtype=object)
    return _fallback(out, polys, "simplified")


def _fallback(out: np.ndarray, ref: np.ndarray, what: str) -> np.ndarray:
    """``out`` with each failing polygon (and its neighbours) replaced by its ``ref`` geometry,
    until none fails (``ref`` itself is a valid coverage)."""
    for _ in range(len(out) + 1):
        bad = _bad_polygons(out, ref)
        if len(bad) == 0:
            return out
        back = _near(out, bad)
        log.warning("%d of %d polygons could not be %s without breaking the coverage: they keep "
                    "their previous outline", len(back), len(out), what)
        out = out.copy()
        out[back] = ref[back]
    return ref.copy()


def chaikin(coords: np.ndarray, iterations: int, closed: bool) -> np.ndarray:
    """Chaikin corner cutting of a line: each segment is replaced by its points at 1/4 and 3/4.

    Args:
        coords: (K, 2) points; for ``closed``, the first point repeated at the end.
        iterations: passes (each doubles the number of segments).
        closed: a ring (every corner is cut) or an open line (its end points are kept).

    Returns:
        (M, 2) points, closed again for a ring.
    """
    pts = np.asarray(coords, dtype=np.float64)
    for _ in range(iterations):
        a, b = pts[:-1], pts[1:]
        q, r = 0.75 * a + 0.25 * b, 0.25 * a + 0.75 * b
        cut = np.empty((2 * len(a), 2))
        cut[0::2], cut[1::2] = q, r
        if closed:
            pts = np.vstack([cut, cut[:1]])
        else:
            pts = np.vstack([pts[:1], cut[1:-1], pts[-1:]])
    return pts


def smooth_coverage(polys, iterations: int = defaults.SMOOTH_ITERATIONS) -> np.ndarray:
    """Chaikin smoothing of a polygon coverage with its nodes (shared corners) fixed.

    Args:
        polys: (N,) Polygons without overlaps, e.g. the output of :func:`simplify_coverage`.
        iterations: corner-cutting passes (0 returns the input).

    Returns:
        (N,) valid Polygons in the same order, same holes, pairwise without overlap, touching
        where the input touched; polygons that could not be smoothed so keep their input outline.
    """
    polys = np.asarray(polys, dtype=object)
    if iterations == 0 or len(polys) == 0:
        return polys.copy()
    polys = shapely.orient_polygons(polys)
    edges = coverage_edges(polys)
    out = []
    for rings in edges:
        new_rings = []
        for ring in rings:
            closed = len(ring) == 1 and np.array_equal(ring[0][0], ring[0][-1])
            new_rings.append([chaikin(e, iterations, closed) for e in ring])
        out.append(_rebuild(new_rings))
    return _fallback(np.array(out, dtype=object), polys, "smoothed")

