"""Near-copy fingerprints for fundus photographs: registered to the lit disc, compared by correlation.

Why not a whole-image hash: every fundus photo is a bright disc on black, so a hash of the
low-frequency structure of the whole frame (the old 256-bit difference hash) matches photos
of different eyes, and misses crops and turns of the same photo. This fingerprint describes
the retina in the eye's own frame, so what is compared is what differs between eyes:

1. **Register** (``locate_disc``). On a copy with a long side of 64-127 px, each pixel's
   distance from the background is the largest channel difference from the corners' colour
   (camera black or, rarely, white), from black (the fill of a turned copy) and from white,
   whichever is least. Where each row and column first enters the lit region gives sub-pixel
   points on the rim of the field of view; points on the frame's border are dropped (the
   frame or a crop cut the disc there) and a circle is fitted to the rest (least squares,
   refitted once without points far off it: a notch, a label). Holds for any size, for crops
   that cut the disc, for 3:2 frames that cut it top and bottom, and for small turns.
2. **Sample** (``disc_grid``). The mean green (vessels, optic disc and macula show best in it)
   of each cell of a ``GRID`` x ``GRID`` lattice over the circle's bounding square, as exact
   box averages of a 128-255 px copy; cells off the image are missing. This is the **code**
   (``near_code``): 256 bytes as 512 hex characters, 1..255 stretched over the code's range,
   0 for missing. Only cells within ``KEEP`` of the radius are kept.
3. **Compare** (``correlation``). Cells within ``INNER`` of the radius count (a 10 % crop cuts
   the rim). Two codes are as alike as their Pearson correlation over the cells both know
   (brightness and contrast drop out; a crop just loses cells), at the best of a few turns of
   one of them (``TURNS``: copies turned by up to ~7 degrees still match).
4. **Search** (``near_pairs``). Stage 1: a 256-bit SimHash of each code (missing inner cells
   filled from their neighbours, standardised; signs of fixed random projections, so the
   share of differing bits estimates the angle between codes) finds candidate pairs at most
   ``NEAR_BITS`` apart (the first 64 bits of every pair first: a cheap filter). Stage 2:
   each candidate's turned correlation must reach ``MIN_CORR``.

Calibrated on RetinaMNIST (1,600 real fundus photos of DeepDRiD, upsampled from 28 px) and the
bundled 1411 px sample: ``bench/nearcopy.py``, results in ``bench/results/nearcopy.md`` and the
README. An unreadable image's '' code, and a featureless image's, match nothing. Pure numpy,
scipy and Pillow; no torch.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image

CODE_VERSION = 1  # change it with anything that changes the codes: cached codes are then recomputed
WORK_SIDE = 128  # the disc is sampled on a copy with a long side of 128 to 255 px
FOV_SIDE = 64  # ... and its rim on a copy reduced to a long side of FOV_SIDE to 2 x FOV_SIDE - 1 px
GRID = 16  # the disc's bounding square is resampled to GRID x GRID cells
INNER = 0.80  # only cells whose centre is within this share of the disc radius are compared
KEEP = 0.95  # cells out to here are kept in the code (room to turn it)
HASH_BITS = 256
SEED = 20240601  # the SimHash projections: np.random.RandomState is a stable stream
NEAR_BITS = 24  # stage 1: candidate pairs differ in at most this many of the 256 SimHash bits
PREFILTER_BITS = 12  # ... and in at most this many of the first 64 (cheap filter)
MIN_CORR = 0.99  # stage 2: the turned correlation of the codes of a near copy is at least this (bench/nearcopy.py)
TURNS = (-6.0, -3.0, 0.0, 3.0, 6.0)  # degrees one code is turned by in stage 2; the best counts
TURN_FLOOR = 0.955  # pairs whose plain correlation is under this are not turned (no copy in the bench is)
MIN_COMMON = 0.5  # two codes are compared only if they share at least this share of the inner cells
CODE_HEX = 2 * GRID * GRID


# ---------------------------------------------------------------- registration


def _work_image(img: Image.Image) -> tuple[Image.Image, float]:
    """An RGB copy whose long side is WORK_SIDE to 2 x WORK_SIDE - 1 px (an integer box
    reduction: about the cost of the old difference hash), and its scale to the original."""
    if img.mode != "RGB":
        img = img.convert("RGB")
    w, h = img.size
    k = max(w, h) // WORK_SIDE
    if k >= 2:
        small = img.reduce(k)
    elif k == 1:
        small = img
    else:  # smaller than WORK_SIDE: enlarge, so that the rim still spans enough pixels
        s = WORK_SIDE / max(w, h)
        small = img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.BICUBIC)
    return small, small.width / w


def _rim_points(dist: np.ndarray, thr: float) -> np.ndarray:
    """(x, y) points, in pixel units, where rows and columns enter and leave the lit region
    (distance from the background over ``thr``), interpolated between pixel centres. Points
    on the image's border (where a crop cut the disc) are left out."""
    h, w = dist.shape
    n = max(h, w)
    sq = np.full((n, n), -1.0, np.float32)  # -1: off the image
    sq[:h, :w] = dist
    # Rows scanned from the left and from the right, columns from the top and from the bottom.
    scans = np.concatenate([sq, sq[:, ::-1], sq.T, sq.T[:, ::-1]])
    lit = scans > thr
    idx = np.arange(4 * n)
    pos = lit.argmax(1)
    inside = scans[idx, pos]
    outside = scans[idx, np.maximum(pos - 1, 0)]
    ok = (inside > thr) & (pos > 0) & (outside >= 0)  # lit somewhere, and entered from a real pixel
    frac = np.minimum((inside - thr) / np.maximum(inside - outside, 1e-3), 1.0)
    e = pos - frac + 0.5  # where the profile crosses thr, counted from the scan's start
    line = (idx % n) + 0.5
    block = idx // n
    along = np.where(block % 2 == 0, e, n - e)  # a scan from the right or bottom counts back
    x = np.where(block < 2, along, line)
    y = np.where(block < 2, line, along)
    return np.stack([x[ok], y[ok]], 1)


def _fit_circle(pts: np.ndarray) -> tuple[float, float, float]:
    """Least-squares circle (Kasa): x^2 + y^2 = D x + E y + F, by its 3 x 3 normal equations."""
    m = np.stack([pts[:, 0], pts[:, 1], np.ones(len(pts))])
    try:
        d, e, f = np.linalg.solve(m @ m.T, m @ (pts * pts).sum(1))
    except np.linalg.LinAlgError:
        return 0.0, 0.0, 0.0
    cx, cy = d / 2, e / 2
    return float(cx), float(cy), float(np.sqrt(max(f + cx * cx + cy * cy, 1e-6)))


def locate_disc(small: Image.Image) -> tuple[float, float, float, bool]:
    """(cx, cy, r, fitted) of the lit field of view of an RGB image, in its pixel units.

    ``fitted`` is False when no circle could be fitted (no dark or white surround, a blank
    image): then the box of the lit pixels, or the whole frame, stands in for it.
    """
    w, h = small.size
    rgb = np.asarray(small)
    c = max(2, min(h, w) // 25)
    corners = np.concatenate([rgb[:c, :c], rgb[:c, -c:], rgb[-c:, :c], rgb[-c:, -c:]]).reshape(-1, 3)
    bg = np.sort(corners, 0)[len(corners) // 2].astype(np.int16)
    # How far each pixel is from the background: the largest difference of its three channels
    # from the corners' colour (camera black or, rarely, white), from black (the fill of a
    # turned copy) and from white, whichever is least.
    x = rgb.astype(np.int16)
    r_, g_, b_ = x[..., 0], x[..., 1], x[..., 2]
    from_bg = np.maximum(np.maximum(np.abs(r_ - bg[0]), np.abs(g_ - bg[1])), np.abs(b_ - bg[2]))
    from_black = np.maximum(np.maximum(r_, g_), b_)
    from_white = 255 - np.minimum(np.minimum(r_, g_), b_)
    dist = np.minimum(np.minimum(from_bg, from_black), from_white).astype(np.float32)
    flat = dist.ravel()
    k = int(0.6 * len(flat))
    thr = 0.3 * max(float(np.partition(flat, k)[k]), 16.0)
    pts = _rim_points(dist, thr)
    if len(pts) >= 12:
        cx, cy, r = _fit_circle(pts)
        # Refit without the points far off the first circle (a notch, a label, glare).
        res = np.abs(np.hypot(pts[:, 0] - cx, pts[:, 1] - cy) - r)
        mid = len(res) // 2
        keep = res <= max(0.5, 4.5 * float(np.partition(res, mid)[mid]))
        if np.count_nonzero(keep) >= 12:
            cx, cy, r = _fit_circle(pts[keep])
            plausible = 0.25 * min(h, w) <= r <= 0.75 * np.hypot(h, w)
            if plausible and -0.25 * w < cx < 1.25 * w and -0.25 * h < cy < 1.25 * h:
                return cx, cy, r, True
    lit = dist > thr
    if lit.sum() < 0.05 * lit.size:
        return w / 2, h / 2, max(w, h) / 2, False
    rows, cols = np.flatnonzero(lit.any(1)), np.flatnonzero(lit.any(0))
    r = max(cols[-1] + 1 - cols[0], rows[-1] + 1 - rows[0]) / 2
    return (cols[0] + cols[-1] + 1) / 2, (rows[0] + rows[-1] + 1) / 2, float(r), False


def _radius(n: int) -> np.ndarray:
    u = (np.arange(n) + 0.5) / n * 2 - 1
    return np.sqrt(u[None, :] ** 2 + u[:, None] ** 2)


_KEEP_MASK = _radius(GRID) < KEEP
_OUTSIDE = ~_KEEP_MASK
_INNER_MASK = _radius(GRID) < INNER
_INNER_IDX = np.flatnonzero(_INNER_MASK.ravel())
INNER_CELLS = len(_INNER_IDX)
_EDGES = np.linspace(-1, 1, GRID + 1)


def disc_grid(img: Image.Image) -> tuple[np.ndarray, tuple[float, float, float, bool]]:
    """Mean green of each cell of a GRID x GRID lattice over the fitted disc's bounding square
    (NaN where a cell leaves the image or lies outside the kept disc), and the disc
    (cx, cy, r in the image's pixels, fitted)."""
    small, s = _work_image(img)
    f = max(1, max(small.size) // FOV_SIDE)  # the rim is found on a coarser copy: cheaper
    cx, cy, r, fitted = locate_disc(small.reduce(f) if f > 1 else small)
    if f > 1:
        cx, cy, r = cx * f, cy * f, r * f
    w, h = small.size
    # Box-average the green channel over each cell (exact area means, so anti-aliased at any
    # size); Pillow wants the box inside the image, so pad it with black first.
    x0, y0, x1, y1 = cx - r, cy - r, cx + r, cy + r
    pad = int(np.ceil(max(0.0, -x0, -y0, x1 - w, y1 - h))) + 1
    green = small.getchannel("G").convert("F")  # float: cell means are not rounded to integers
    if pad:
        green = green.crop((-pad, -pad, w + pad, h + pad))
    cells = green.resize((GRID, GRID), Image.Resampling.BOX, box=(x0 + pad, y0 + pad, x1 + pad, y1 + pad))
    grid = np.array(cells, dtype=np.float32)
    if pad > 1:  # some cells may reach off the image: mark them missing
        off_x = (cx + r * _EDGES[:-1] < -0.01) | (cx + r * _EDGES[1:] > w + 0.01)
        off_y = (cy + r * _EDGES[:-1] < -0.01) | (cy + r * _EDGES[1:] > h + 0.01)
        grid[off_y[:, None] | off_x[None, :]] = np.nan
    grid[_OUTSIDE] = np.nan
    return grid, (cx / s, cy / s, r / s, fitted)


# ---------------------------------------------------------------- the code


def encode(grid: np.ndarray) -> str:
    """A GRID x GRID grid (NaN = missing) as hex: 1..255 stretched over its range, 0 missing."""
    ok = np.isfinite(grid)
    q = np.zeros(grid.shape, np.uint8)
    if ok.any():
        lo, hi = float(grid[ok].min()), float(grid[ok].max())
        q[ok] = 1 + np.round((grid[ok] - lo) * (254 / max(hi - lo, 1e-6))).astype(np.uint8)
    return q.tobytes().hex()


def decode(codes: Sequence[str]) -> np.ndarray:
    """(N, GRID, GRID) float32, NaN for missing cells; a code that is not CODE_HEX hex
    characters (an unreadable image's '') decodes to all-missing, which matches nothing."""
    try:  # the usual case: every code well formed
        if any(len(c) != CODE_HEX for c in codes):
            raise ValueError
        raw = np.frombuffer(bytes.fromhex("".join(codes)), np.uint8).reshape(len(codes), GRID * GRID)
    except ValueError:
        raw = np.zeros((len(codes), GRID * GRID), np.uint8)
        for k, c in enumerate(codes):
            try:
                if len(c) == CODE_HEX:
                    raw[k] = np.frombuffer(bytes.fromhex(c), np.uint8)
            except ValueError:
                pass
    out = raw.reshape(len(codes), GRID, GRID).astype(np.float32)
    out[raw.reshape(out.shape) == 0] = np.nan
    return out


def near_code(img: Image.Image) -> str:
    """The near-copy fingerprint of a decoded image: CODE_HEX hex characters (256 bytes)."""
    return encode(disc_grid(img)[0])


def standardise(grids: np.ndarray) -> np.ndarray:
    """(N, INNER_CELLS) unit vectors: each grid's inner-disc cells, mean 0 (missing cells 0).
    A grid with no contrast (blank) gives a zero vector, which matches nothing."""
    return _unit(grids.reshape(len(grids), -1)[:, _INNER_IDX])


def _unit(v: np.ndarray) -> np.ndarray:
    """Rows of inner cells (NaN missing) centred on their known cells' mean, unit length."""
    v = v.astype(np.float32)  # a copy
    m = np.isfinite(v)
    v[~m] = 0.0
    v -= v.sum(1, keepdims=True) / np.maximum(m.sum(1, keepdims=True), 1)
    v[~m] = 0.0
    norm = np.sqrt(np.einsum("nd,nd->n", v, v))[:, None]
    v /= np.where(norm > 1e-3, norm, np.inf)
    return v


def filled(grids: np.ndarray, sigma: float = 1.5) -> np.ndarray:
    """``grids`` with their missing inner cells guessed from the known cells around them (a
    normalised Gaussian blur), so that a crop that cuts into the disc changes the SimHash
    less. For stage 1 only; stage 2 compares known cells."""
    ok = np.isfinite(grids)
    gaps = np.flatnonzero(~ok[:, _INNER_MASK].all(1))  # only grids missing inner cells need it
    if len(gaps) == 0:
        return grids
    from scipy import ndimage  # here: opening a dataset does not pay for importing it

    sub, okg = grids[gaps], ok[gaps]
    v = np.where(okg, sub, 0).astype(np.float32)
    num = ndimage.gaussian_filter(v, (0, sigma, sigma), mode="constant")
    den = ndimage.gaussian_filter(okg.astype(np.float32), (0, sigma, sigma), mode="constant")
    out = grids.copy()
    out[gaps] = np.where(okg, sub, np.where(den > 1e-3, num / np.maximum(den, 1e-3), np.nan))
    return out


def search_vectors(grids: np.ndarray) -> np.ndarray:
    """What stage 1 hashes: the standardised codes with missing inner cells filled in."""
    return standardise(filled(grids))


_PROJ = np.random.RandomState(SEED).standard_normal((INNER_CELLS, HASH_BITS)).astype(np.float32)


def simhash(vectors: np.ndarray) -> np.ndarray:
    """(N, HASH_BITS // 64) uint64: signs of fixed random projections of standardised codes
    (SimHash: the share of bits two of them differ in estimates the angle between them)."""
    bits = np.packbits(vectors @ _PROJ > 0, axis=1)
    return np.ascontiguousarray(bits).view(">u8").astype(np.uint64)


def _turn_matrix(angle: float) -> np.ndarray:
    """(GRID*GRID, GRID*GRID) bilinear weights that turn a grid by ``angle`` degrees about its
    centre: turned = grid @ W.T. Weights that would read off the grid are dropped, so a turned
    cell whose weights sum to under 1 touched a missing cell or the edge."""
    a = np.deg2rad(angle)
    c = (GRID - 1) / 2
    yy, xx = np.mgrid[:GRID, :GRID].astype(np.float64)
    sx = np.cos(a) * (xx - c) - np.sin(a) * (yy - c) + c  # where each output cell reads from
    sy = np.sin(a) * (xx - c) + np.cos(a) * (yy - c) + c
    x0, y0 = np.floor(sx).astype(int), np.floor(sy).astype(int)
    fx, fy = sx - x0, sy - y0
    w = np.zeros((GRID * GRID, GRID * GRID))
    out = np.arange(GRID * GRID).reshape(GRID, GRID)
    for dy, dx, wt in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx), (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
        ys, xs = y0 + dy, x0 + dx
        ok = (ys >= 0) & (ys < GRID) & (xs >= 0) & (xs < GRID) & (wt > 0)
        np.add.at(w, (out[ok], ys[ok] * GRID + xs[ok]), wt[ok])
    return w[_INNER_IDX].T.astype(np.float32)  # (GRID*GRID, INNER_CELLS): only inner cells are compared


_TURN_MATRICES: dict[float, np.ndarray] = {}


def turned(grids: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """(vectors, masks) of ``grids`` turned by ``angle`` degrees: ``standardise`` of the
    turned grids, and 1 where an inner cell is known (0 where it read a missing cell)."""
    flat = grids.reshape(len(grids), -1)
    if angle == 0:
        inner = flat[:, _INNER_IDX]
    else:
        w = _TURN_MATRICES.get(angle)
        if w is None:
            w = _TURN_MATRICES[angle] = _turn_matrix(angle)
        ok = np.isfinite(flat)
        inner = np.where(ok, flat, 0).astype(np.float32) @ w
        gaps = np.flatnonzero(~ok[:, _KEEP_MASK.ravel()].all(1))  # grids missing kept cells
        if len(gaps):  # a turned cell that read a missing one is missing
            inner[gaps] = np.where(ok[gaps].astype(np.float32) @ w > 0.999, inner[gaps], np.nan)
    return _unit(inner), np.isfinite(inner).astype(np.float32)


def _common_corr(va: np.ndarray, ma: np.ndarray, vb: np.ndarray, mb: np.ndarray) -> np.ndarray:
    """Row-wise correlation over the cells known in both (a crop or a turn loses some):
    va, vb standardised vectors (0 where unknown), ma, mb their 0/1 masks. Pairs sharing
    under MIN_COMMON of the inner cells get -1: too little to compare."""
    n = np.einsum("nd,nd->n", ma, mb)
    sa = np.einsum("nd,nd->n", va, mb)
    sb = np.einsum("nd,nd->n", vb, ma)
    saa = np.einsum("nd,nd->n", va * va, mb)
    sbb = np.einsum("nd,nd->n", vb * vb, ma)
    sab = np.einsum("nd,nd->n", va, vb)
    nn = np.maximum(n, 1)
    var = np.maximum(saa - sa * sa / nn, 0) * np.maximum(sbb - sb * sb / nn, 0)
    corr = (sab - sa * sb / nn) / np.sqrt(np.where(var > 0, var, np.inf))
    return np.where(n >= MIN_COMMON * INNER_CELLS, corr, -1.0).astype(np.float32)


def correlation(grids_a: np.ndarray, grids_b: np.ndarray, turns: Sequence[float] = TURNS) -> np.ndarray:
    """Per pair (row k of a with row k of b): the best correlation of b with a turned copy of
    a, over the cells both know."""
    vb, mb = turned(grids_b, 0.0)
    best = np.full(len(grids_a), -1.0, np.float32)
    for angle in turns:
        va, ma = turned(grids_a, angle)
        best = np.maximum(best, _common_corr(va, ma, vb, mb))
    return best


def pair_correlation(grids: np.ndarray, ii: np.ndarray, jj: np.ndarray, turns: Sequence[float] = TURNS,
                     floor: float = TURN_FLOOR, enough: float | None = None, chunk: int = 65_536) -> np.ndarray:
    """``correlation(grids[ii], grids[jj])`` for many pairs, each grid turned once.

    The plain correlation of the ``search_vectors`` screens first: pairs under ``floor`` (no
    copy in the bench is) keep it, and so do pairs of whole codes at least ``enough`` (if
    given); only the rest get the turned, common-cell correlation, the costly part."""
    sv = search_vectors(grids)
    out = np.empty(len(ii), np.float32)
    for s in range(0, len(ii), chunk):
        out[s:s + chunk] = np.einsum("nd,nd->n", sv[ii[s:s + chunk]], sv[jj[s:s + chunk]])
    v, m = turned(grids, 0.0)
    whole = m.all(1)  # codes that know every inner cell: their plain correlation is the common-cell one
    todo = out >= floor
    if enough is not None:  # accepted as they are: pairs of whole codes already at ``enough``
        todo &= (out < enough) | ~(whole[ii] & whole[jj])
    todo = np.flatnonzero(todo)
    if len(todo) == 0:
        return out
    uniq, where = np.unique(ii[todo], return_inverse=True)
    best = np.full(len(todo), -1.0, np.float32)
    for angle in turns:
        va, ma = (v[uniq], m[uniq]) if angle == 0 else turned(grids[uniq], angle)
        whole_a = ma.all(1)
        for s in range(0, len(todo), chunk):
            w, j = where[s:s + chunk], jj[todo[s:s + chunk]]
            both = whole_a[w] & whole[j]
            corr = np.empty(len(w), np.float32)
            k = np.flatnonzero(both)
            corr[k] = np.einsum("nd,nd->n", va[w[k]], v[j[k]])
            k = np.flatnonzero(~both)
            if len(k):
                corr[k] = _common_corr(va[w[k]], ma[w[k]], v[j[k]], m[j[k]])
            best[s:s + chunk] = np.maximum(best[s:s + chunk], corr)
    out[todo] = best
    return out


# ---------------------------------------------------------------- search


def candidate_pairs(hashes: np.ndarray, max_bits: int = NEAR_BITS, prefilter_bits: int = PREFILTER_BITS,
                    chunk: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Index arrays (i < j, sorted by i) of hashes at most ``max_bits`` apart. The first 64
    bits are compared for all pairs, ``chunk`` rows at a time into reused buffers; only pairs
    within ``prefilter_bits`` there are counted in full."""
    first = np.ascontiguousarray(hashes[:, 0])
    n = len(first)
    size = min(chunk, n) * n
    xor, count, close = np.empty(size, np.uint64), np.empty(size, np.uint8), np.empty(size, bool)
    out_i, out_j = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for start in range(0, n, chunk):
        rows = first[start:start + chunk]
        shape = (len(rows), n - start)
        k = shape[0] * shape[1]
        x, c, b = xor[:k].reshape(shape), count[:k].reshape(shape), close[:k].reshape(shape)
        np.bitwise_xor(rows[:, None], first[None, start:], out=x)
        np.bitwise_count(x, out=c)
        np.less_equal(c, prefilter_bits, out=b)
        ii, jj = np.nonzero(b)
        keep = jj > ii  # the upper triangle only: not a pair with itself, each pair once
        ii, jj = ii[keep] + start, jj[keep] + start
        near = np.bitwise_count(hashes[ii] ^ hashes[jj]).sum(-1) <= max_bits
        out_i.append(ii[near])
        out_j.append(jj[near])
    return np.concatenate(out_i), np.concatenate(out_j)


def scored_pairs(codes: Sequence[str], min_corr: float = MIN_CORR, max_bits: int = NEAR_BITS,
                 prefilter_bits: int = PREFILTER_BITS) -> list[tuple[int, int, float]]:
    """(i, j, correlation) for every pair of codes judged near copies, i < j. The correlation
    is the plain one where two whole codes already reach ``min_corr``, else the best turned one
    over the cells both know."""
    if len(codes) < 2:
        return []
    grids = decode(codes)
    ii, jj = candidate_pairs(simhash(search_vectors(grids)), max_bits, prefilter_bits)
    corr = pair_correlation(grids, ii, jj, enough=min_corr)
    keep = np.flatnonzero(corr >= min_corr)
    return [(int(ii[k]), int(jj[k]), float(corr[k])) for k in keep]


def near_pairs(codes: Sequence[str], min_corr: float = MIN_CORR, max_bits: int = NEAR_BITS) -> list[tuple[int, int]]:
    """Index pairs (i < j) of near copies among ``near_code`` strings."""
    return [(i, j) for i, j, _ in scored_pairs(codes, min_corr, max_bits)]
