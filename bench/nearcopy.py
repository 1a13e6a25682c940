"""Near-copy detection of ``validate --deep`` on real fundus photos: false pairs and recall.

    python bench/nearcopy.py                # all 1,600 RetinaMNIST photos at 512 px (a few minutes)
    python bench/nearcopy.py --n 400        # a quicker look

The photos are the real ones the package ships (``retino_core/assets``):

* **RetinaMNIST**: 1,600 colour fundus photos of the DeepDRiD challenge at 28 x 28, each
  upsampled (bicubic) to ``--side`` px. Negatives: pairs of photos of **different patients**.
  DeepDRiD split its patients between its training set (RetinaMNIST's train and val) and its
  validation set (RetinaMNIST's test), so every train/val photo against every test photo is a
  pair of different eyes: 480,000 pairs. Pairs inside one side may be the same eye photographed
  twice (DeepDRiD took several photos of each eye) and are reported apart, not counted as false.
* **The bundled sample**: one sharp 1411 x 1411 photo; ``SAMPLE_COPIES`` altered copies per
  kind, as it is and in a 3:2 frame that cuts the disc top and bottom (as EyePACS frames many
  photos); regions of it, its mirror image and its flip as extra negatives.

Positives: one altered copy of every photo per kind (``KINDS``), found if ``near_pairs`` over
the originals and the copies pairs it with its own original. The old whole-image difference
hash (256 bits, at most 12 apart) runs on the same images for comparison. Writes
``bench/results/nearcopy.md`` and ``nearcopy.json``. No torch.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from PIL import Image, ImageDraw, ImageEnhance  # noqa: E402

from retino_core.data import nearcopy  # noqa: E402
from retino_core.data.images import RETINAMNIST_NPZ, SAMPLE_IMAGE  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SAMPLE_COPIES = 40
SWEEP = (0.98, 0.985, 0.9875, 0.99, 0.9925, 0.995)
PER = 1000  # false pairs are reported per this many distinct photos


# ---------------------------------------------------------------- alterations

RESAMPLERS = (Image.Resampling.NEAREST, Image.Resampling.BILINEAR, Image.Resampling.BICUBIC,
              Image.Resampling.LANCZOS, Image.Resampling.BOX)


def jpeg(img, rng):
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=int(rng.integers(30, 96)))
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def resize(img, rng):
    f = float(np.exp(rng.uniform(np.log(0.25), np.log(2.0))))
    w, h = img.size
    return img.resize((max(16, round(w * f)), max(16, round(h * f))), RESAMPLERS[int(rng.integers(len(RESAMPLERS)))])


def crop(img, rng):
    """2-10 % off each axis, split at random between its two edges."""
    box = []
    for n in img.size:
        cut = rng.uniform(0.02, 0.10) * n
        a = rng.uniform(0, cut)
        box.append((round(a), round(n - (cut - a))))
    (x0, x1), (y0, y1) = box
    return img.crop((x0, y0, x1, y1))


def rotate(img, rng):
    return img.rotate(float(rng.uniform(-5, 5)), Image.Resampling.BICUBIC, fillcolor=(0, 0, 0))


def photometric(img, rng):
    """Brightness, contrast and gamma, each by a factor in 0.7-1.3."""
    b, c, g = (float(rng.uniform(0.7, 1.3)) for _ in range(3))
    img = ImageEnhance.Contrast(ImageEnhance.Brightness(img).enhance(b)).enhance(c)
    return img.point([min(255, round(255 * (i / 255) ** g)) for i in range(256)] * 3)


def combined(img, rng):
    for alter in (crop, rotate, resize, photometric, jpeg):
        img = alter(img, rng)
    return img


KINDS = {"re-encoded (JPEG q30-95)": jpeg, "resized (0.25-2x, 5 filters)": resize,
         "cropped (2-10 % per axis)": crop, "turned (±5°)": rotate,
         "brightness, contrast, gamma (±30 %)": photometric, "all five at once": combined}


# ---------------------------------------------------------------- the old hash, for comparison


def old_dhash(img: Image.Image, side: int = 16) -> np.ndarray:
    """The previous near-copy hash: a 256-bit difference hash of a 17 x 16 grey thumbnail."""
    grey = np.asarray(img.convert("L").resize((side + 1, side), Image.Resampling.BOX), dtype=np.int16)
    return np.packbits(grey[:, 1:] > grey[:, :-1])


OLD_BITS = 12


def old_close(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.bitwise_count(a ^ b).sum(-1) <= OLD_BITS


# ---------------------------------------------------------------- photos


def retinamnist(n: int | None):
    """Photos (N, 28, 28, 3), grades and splits: all of them, or ``n`` drawn at random (seed 0)."""
    with np.load(RETINAMNIST_NPZ) as d:
        parts = [(s, d[f"{s}_images"], d[f"{s}_labels"].ravel()) for s in ("train", "val", "test")]
    x = np.concatenate([images for _, images, _ in parts])
    y = np.concatenate([labels for _, _, labels in parts])
    split = np.array([s for s, images, _ in parts for _ in range(len(images))])
    keep = np.arange(len(x)) if not n or n >= len(x) else \
        np.sort(np.random.default_rng(0).choice(len(x), n, replace=False))
    return x[keep], y[keep], split[keep]


def upsample(arr: np.ndarray, side: int) -> Image.Image:
    return Image.fromarray(arr).resize((side, side), Image.Resampling.BICUBIC)


def eyepacs_frame(sample: Image.Image) -> Image.Image:
    """The sample in a 3:2 frame that cuts the disc top and bottom, centred on black."""
    frame = Image.new("RGB", (1650, 1100))
    frame.paste(sample.crop((0, 150, sample.width, 1250)), ((1650 - sample.width) // 2, 0))
    return frame


def regions(sample: Image.Image) -> dict[str, Image.Image]:
    """Narrower fields of the same eye: square crops 0.55 of the disc wide, 0.25 r apart, masked to a disc."""
    _, (cx, cy, r, _) = nearcopy.disc_grid(sample)
    side, out = 1.1 * r, {}
    for name, (dx, dy) in {"centre": (0, 0), "left": (-0.25, 0), "right": (0.25, 0), "up": (0, -0.25),
                           "down": (0, 0.25)}.items():
        x0, y0 = cx + dx * r - side / 2, cy + dy * r - side / 2
        reg = sample.crop((round(x0), round(y0), round(x0 + side), round(y0 + side)))
        mask = Image.new("L", reg.size, 0)
        ImageDraw.Draw(mask).ellipse((0, 0, reg.width - 1, reg.height - 1), fill=255)
        out[f"region {name}"] = Image.composite(reg, Image.new("RGB", reg.size), mask)
    return out


# ---------------------------------------------------------------- measures


def per_photos(false: int, pairs: int) -> float:
    """False pairs per PER distinct photos, from a count over ``pairs`` pairs of distinct photos."""
    return false / pairs * PER * (PER - 1) / 2


def poisson_upper(k: int, conf: float = 0.95) -> float:
    """One-sided upper confidence bound of a Poisson mean after observing ``k`` events."""
    from scipy.stats import chi2

    return float(chi2.ppf(conf, 2 * (k + 1)) / 2)


def scores(codes: list[str]) -> list[tuple[int, int, float]]:
    """(i, j, correlation) of every candidate pair of stage 1, with its full (best turned) correlation,
    so that any threshold of the sweep can be applied; at MIN_CORR the pairs are ``near_pairs``'s."""
    grids = nearcopy.decode(codes)
    ii, jj = nearcopy.candidate_pairs(nearcopy.simhash(nearcopy.search_vectors(grids)))
    corr = nearcopy.pair_correlation(grids, ii, jj)
    out = [(int(i), int(j), float(c)) for i, j, c in zip(ii, jj, corr) if c >= min(SWEEP)]
    chosen = {(i, j) for i, j, c in out if c >= nearcopy.MIN_CORR}
    assert chosen == set(nearcopy.near_pairs(codes)), "the bench scores other pairs than the package finds"
    return out


def negatives(codes: list[str], old: np.ndarray, y: np.ndarray, split: np.ndarray) -> dict:
    """Flagged pairs among the originals: between different patients (false pairs) and inside one side."""
    scored = scores(codes)
    train_side = split != "test"
    n_train, n_test = int(train_side.sum()), int((~train_side).sum())
    cross_pairs = n_train * n_test
    out: dict = {"photos": len(codes), "pairs_different_patients": cross_pairs,
                 "pairs_all": len(codes) * (len(codes) - 1) // 2, "sweep": {}}
    for t in SWEEP:
        hits = [(i, j, c) for i, j, c in scored if c >= t]
        cross = [h for h in hits if train_side[h[0]] != train_side[h[1]]]
        out["sweep"][str(t)] = {"false_pairs": len(cross), "flagged_same_side": len(hits) - len(cross)}
    chosen = [(i, j, c) for i, j, c in scored if c >= nearcopy.MIN_CORR]
    out["flagged"] = [{"i": i, "j": j, "corr": round(c, 4), "grades": [int(y[i]), int(y[j])],
                       "splits": [str(split[i]), str(split[j])]} for i, j, c in chosen]
    same = sum(y[i] == y[j] and split[i] == split[j] for i, j, _ in chosen)
    iu = np.triu_indices(len(y), 1)
    out["same_grade_and_split"] = {"flagged": [int(same), len(chosen)],
                                   "random_pairs": round(float(np.mean((y[iu[0]] == y[iu[1]]) &
                                                                       (split[iu[0]] == split[iu[1]]))), 3)}
    old_cross = sum(int(old_close(old[i], old[~train_side]).sum()) for i in np.flatnonzero(train_side))
    old_all = sum(int(old_close(old[i], old[i + 1:]).sum()) for i in range(len(old) - 1))
    out["old"] = {"false_pairs": old_cross, "flagged_same_side": old_all - old_cross}
    return out


def recall(originals: list[str], altered: list[str]) -> dict:
    """Share of altered copies paired with their own original, at each threshold of the sweep; and
    how many were paired with another photo instead (at the chosen threshold)."""
    n = len(originals)
    scored = scores(originals + altered)
    own = {i: c for i, j, c in scored if j == i + n}
    out = {str(t): sum(c >= t for c in own.values()) / n for t in SWEEP}
    out["paired_with_another_photo"] = sum(1 for i, j, c in scored
                                           if c >= nearcopy.MIN_CORR and i < n <= j and j != i + n)
    return out


def run_retinamnist(n: int | None, side: int, seed: int) -> dict:
    x, y, split = retinamnist(n)
    rng = np.random.default_rng(seed)
    photos = [upsample(a, side) for a in x]
    codes = [nearcopy.near_code(p) for p in photos]
    old = np.stack([old_dhash(p) for p in photos])
    res = {"negatives": negatives(codes, old, y, split), "recall": {}, "old_recall": {}}
    for kind, alter in KINDS.items():
        copies = [alter(p, rng) for p in photos]
        res["recall"][kind] = recall(codes, [nearcopy.near_code(c) for c in copies])
        res["old_recall"][kind] = float(old_close(old, np.stack([old_dhash(c) for c in copies])).mean())
    return res


def run_sample(seed: int) -> dict:
    sample = Image.open(SAMPLE_IMAGE).convert("RGB")
    rng = np.random.default_rng(seed + 1)
    res: dict = {"size": list(sample.size), "copies_per_kind": SAMPLE_COPIES}
    for label, base in (("as shipped", sample), ("in a 3:2 frame", eyepacs_frame(sample))):
        code, old = nearcopy.near_code(base), old_dhash(base)
        res[label] = {}
        for kind, alter in KINDS.items():
            copies = [alter(base, rng) for _ in range(SAMPLE_COPIES)]
            pairs = set(nearcopy.near_pairs([code] + [nearcopy.near_code(c) for c in copies]))
            res[label][kind] = {"recall": sum((0, k) in pairs for k in range(1, SAMPLE_COPIES + 1)) / SAMPLE_COPIES,
                                "old_recall": float(old_close(old, np.stack([old_dhash(c) for c in copies])).mean())}
    extra = {"sample": sample, **regions(sample),
             "mirrored left-right": sample.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
             "flipped upside down": sample.transpose(Image.Transpose.FLIP_TOP_BOTTOM)}
    names = list(extra)
    grids = nearcopy.decode([nearcopy.near_code(v) for v in extra.values()])
    ii, jj = np.triu_indices(len(names), 1)
    scored = dict(zip(zip(ii.tolist(), jj.tolist()), nearcopy.pair_correlation(grids, ii, jj, floor=-1.0).tolist()))
    res["extra_negatives"] = [{"a": names[i], "b": names[j], "corr": round(c, 4),
                               "flagged": c >= nearcopy.MIN_CORR} for (i, j), c in scored.items()
                              if names[i] == "sample" or (names[i].startswith("region") and names[j].startswith("region"))]
    return res


# ---------------------------------------------------------------- report


def markdown(res: dict) -> str:
    neg, kinds, t = res["retinamnist"]["negatives"], list(KINDS), str(nearcopy.MIN_CORR)
    pairs = neg["pairs_different_patients"]
    false = neg["sweep"][t]["false_pairs"]
    old_false = neg["old"]["false_pairs"]
    out = [f"# Near-copy detection on real fundus photos ({res['date']}, seed {res['seed']})", "",
           f"`python bench/nearcopy.py --n {res['n']} --side {res['side']}`: {neg['photos']:,} RetinaMNIST photos "
           f"(DeepDRiD, 28 px, upsampled to {res['side']} px) and the bundled 1411 px sample. "
           f"{res['seconds']:.0f} s on the 2-core CPU machine (load average {res['load_avg'][0]:.1f}).", "",
           f"| | fundus code (correlation ≥ {t}) | old difference hash (≤ {OLD_BITS} of 256 bits) |",
           "| --- | ---: | ---: |",
           f"| false pairs among {pairs:,} pairs of different patients | {false} | {old_false} |",
           f"| false pairs per {PER:,} distinct photos (95 % upper bound) | {per_photos(false, pairs):.2f} "
           f"({per_photos(poisson_upper(false), pairs):.1f}) | {per_photos(old_false, pairs):.2f} "
           f"({per_photos(poisson_upper(old_false), pairs):.1f}) |",
           f"| pairs flagged inside one side (same patients: retakes or copies) | "
           f"{neg['sweep'][t]['flagged_same_side']} | {neg['old']['flagged_same_side']} |"]
    for k in kinds:
        out.append(f"| found: {k} | {100 * res['retinamnist']['recall'][k][t]:.1f} % | "
                   f"{100 * res['retinamnist']['old_recall'][k]:.1f} % |")
    s = res["sample"]
    for label in ("as shipped", "in a 3:2 frame"):
        found = " / ".join(f"{100 * s[label][k]['recall']:.0f}" for k in kinds)
        old = " / ".join(f"{100 * s[label][k]['old_recall']:.0f}" for k in kinds)
        out.append(f"| sample {label}, {s['copies_per_kind']} copies per kind, found (%, kinds in the order above) "
                   f"| {found} | {old} |")
    same, flagged = neg["same_grade_and_split"]["flagged"]
    out += ["", f"Of the {flagged} pairs flagged among all {neg['pairs_all']:,} pairs, {same} have the same grade "
            f"and the same split (random pairs: {100 * neg['same_grade_and_split']['random_pairs']:.0f} %): "
            "the same eye photographed twice, which DeepDRiD did. Altered copies paired with another photo than "
            "their own (of them, mostly with such a retake of the same eye): "
            + ", ".join(f"{k} {res['retinamnist']['recall'][k]['paired_with_another_photo']}" for k in kinds) + ".",
            "", "## Threshold sweep", "",
            "| min correlation | false pairs | per 1,000 photos | flagged inside one side | "
            + " | ".join(kinds) + " |", "| ---: | ---: | ---: | ---: | " + " | ".join("---:" for _ in kinds) + " |"]
    for th in SWEEP:
        sw = neg["sweep"][str(th)]
        out.append(f"| {th} | {sw['false_pairs']} | {per_photos(sw['false_pairs'], pairs):.2f} | "
                   f"{sw['flagged_same_side']} | "
                   + " | ".join(f"{100 * res['retinamnist']['recall'][k][str(th)]:.1f}" for k in kinds) + " |")
    out += ["", "## The sample's extra negatives", "", "| a | b | correlation | flagged |", "| --- | --- | ---: | --- |"]
    out += [f"| {r['a']} | {r['b']} | {r['corr']} | {'yes' if r['flagged'] else 'no'} |" for r in s["extra_negatives"]]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1600, help="RetinaMNIST photos (all 1,600 by default)")
    parser.add_argument("--side", type=int, default=512, help="upsample the 28 px photos to this side")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "nearcopy.md", help="markdown; the JSON goes next to it")
    args = parser.parse_args(argv)
    start = time.time()
    res = {"n": args.n, "side": args.side, "seed": args.seed, "date": time.strftime("%Y-%m-%d"),
           "min_corr": nearcopy.MIN_CORR, "near_bits": nearcopy.NEAR_BITS,
           "retinamnist": run_retinamnist(args.n, args.side, args.seed), "sample": run_sample(args.seed)}
    res["seconds"], res["load_avg"] = time.time() - start, list(os.getloadavg())
    text = markdown(res)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps(res, indent=1, ensure_ascii=False) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
