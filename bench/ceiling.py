"""How far RetinaMNIST's test AUC moves: recipe variants outside the trainer's options,
dihedral TTA, and ensembles, scored from per-epoch logits.

    python bench/ceiling.py run --dir /tmp/ceiling base                       # the cpu preset, ResNet18
    python bench/ceiling.py run --dir /tmp/ceiling mix2 mixup=0.2
    python bench/ceiling.py run --dir /tmp/ceiling rot180 rot=180
    python bench/ceiling.py run --dir /tmp/ceiling small28 stem=small image_size=28
    python bench/ceiling.py report --dir /tmp/ceiling                         # ceiling.md / .json

``run`` trains ResNet18 with the trainer's own building blocks (loaders, loss, optimiser,
schedule, weight EMA) and keeps the EMA model's validation and test logits after every epoch:
plain, flip TTA and the eight dihedral views (the last two from the second half on). Options
on top of ``make_config('cpu', ...)`` overrides: ``mixup=ALPHA`` (input mixup), ``rot=DEG``
(rotation range instead of the preset's 30), ``stem=small`` (3x3 stride-1 first convolution
for native 28 px input). ``report`` picks each run's epoch by validation loss, as the trainer
does, and also shows the best test AUC over all epochs (an oracle no recipe can use) and the
averaged probabilities of several runs.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402
from torch import nn  # noqa: E402
from torchvision.transforms import v2  # noqa: E402

from retino_core import runs  # noqa: E402
from retino_core.config import make_config  # noqa: E402
from retino_core.data.sources import open_source  # noqa: E402
from retino_core.judging.metrics import classification_metrics, nll, softmax  # noqa: E402
from retino_core.data.transforms import tta_views  # noqa: E402
from retino_core.models.builders import build_model  # noqa: E402
from retino_core.training import recipe  # noqa: E402
from retino_core.training.loaders import build_loaders  # noqa: E402

VIEWS = ("plain", "tta", "d8")


def dihedral_views(x: torch.Tensor) -> list[torch.Tensor]:
    """The eight rotations by 90 degrees and their mirror images."""
    out = []
    for k in range(4):
        r = torch.rot90(x, k, (-2, -1))
        out += [r, r.flip(-1)]
    return out


VIEW_FNS = {"plain": lambda x: [x], "tta": tta_views, "d8": dihedral_views}


@torch.no_grad()
def logits_of(model: nn.Module, loader, views) -> np.ndarray:
    model.eval()
    return torch.cat([torch.stack([model(v) for v in views(x)]).mean(0) for x, _ in loader]).numpy()


def parse_overrides(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"expected KEY=VALUE, got {pair!r}")
        for cast in (int, float):
            try:
                value = cast(value)
                break
            except ValueError:
                pass
        out[key] = value
    return out


def train_variant(out: Path, mixup: float = 0.0, rot: int = 30, stem: str = "std", **over) -> dict:
    cfg = make_config("cpu", arch="resnet18", **over)
    torch.manual_seed(cfg.seed)
    device = torch.device("cpu")
    source = open_source(cfg.data, cfg.val_fraction, cfg.seed)
    loaders = build_loaders(cfg, source, device)
    if rot != 30:
        tf = loaders["train"].dataset.transform
        tf.transforms = [v2.RandomRotation(rot) if isinstance(s, v2.RandomRotation) else s for s in tf.transforms]
    model = build_model(cfg.arch)
    if stem == "small":
        model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    opt = recipe.build_optimizer(cfg, model, device)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, recipe.lr_factor(cfg, len(loaders["train"])))
    ema = recipe.weight_ema(model, cfg.ema or 0.99)
    loss_fn = recipe.build_loss(cfg, source.splits["train"].labels)
    beta = torch.distributions.Beta(mixup, mixup) if mixup else None
    rec = {"cfg": cfg.to_dict(), "mixup": mixup, "rot": rot, "stem": stem, "epochs": [],
           "threads": torch.get_num_threads()}
    train_s = 0.0
    for epoch in range(1, cfg.epochs + 1):
        torch.manual_seed(cfg.seed * 1000 + epoch)
        model.train()
        t0 = time.monotonic()
        for step, (x, y) in enumerate(loaders["train"]):
            if cfg.max_steps_per_epoch and step >= cfg.max_steps_per_epoch:
                break
            if beta is not None:
                lam, perm = float(beta.sample()), torch.randperm(x.shape[0])
                logits = model(lam * x + (1 - lam) * x[perm])
                loss = lam * loss_fn(logits, y) + (1 - lam) * loss_fn(logits, y[perm])
            else:
                loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            ema.update_parameters(model)
        train_s += time.monotonic() - t0
        row = {"epoch": epoch}
        for split in ("val", "test"):
            for view in VIEWS if epoch > cfg.epochs // 2 else ("plain",):
                row[f"ema_{split}_{view}"] = logits_of(ema.module, loaders[split], VIEW_FNS[view]).tolist()
        rec["epochs"].append(row)
        print(f"{out.stem} epoch {epoch}: {time.monotonic() - t0:.1f} s", flush=True)
    rec.update(train_seconds=train_s, y_val=source.splits["val"].labels.tolist(),
               y_test=source.splits["test"].labels.tolist())
    out.write_text(json.dumps(rec))
    return rec


def selected(rec: dict, view: str) -> tuple[int, np.ndarray]:
    """(epoch index chosen on validation loss, test probabilities there) for one view."""
    yv = np.array(rec["y_val"])
    key = f"ema_%s_{view}"
    cand = [i for i, e in enumerate(rec["epochs"]) if key % "val" in e]
    best = min(cand, key=lambda i: nll(yv, softmax(np.array(rec["epochs"][i][key % "val"]))))
    return best, softmax(np.array(rec["epochs"][best][key % "test"]))


def report(folder: Path, out: Path) -> list[str]:
    recs = {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}
    if not recs:
        raise SystemExit(f"no run records (*.json) in {folder}")
    lines = ["# RetinaMNIST test AUC: recipe variants, TTA views and ensembles (ResNet18)", "",
             f"- command: `python bench/ceiling.py report --dir {folder}` over the runs below",
             "- epoch chosen on validation loss; 'oracle' is the best test AUC over all epochs, "
             "shown only as an upper bound",
             "- train seconds: the epochs only (no evaluation), with the run's thread count", "",
             "| run | changes to the cpu preset | seed | epoch | test ACC | test AUC | QWK | referable AUC "
             "| AUC, 8 dihedral views | AUC per grade 0/1/2/3/4 | oracle AUC | train s (threads) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    rows, probs = [], {}
    base = make_config("cpu", arch="resnet18").to_dict()
    for name, rec in recs.items():
        yt = np.array(rec["y_test"])
        i, p = selected(rec, "tta")
        _, p8 = selected(rec, "d8")
        m = classification_metrics(yt, p)
        probs[name] = p
        oracle = max(roc_auc_score(yt, softmax(np.array(e["ema_test_tta"])), multi_class="ovr")
                     for e in rec["epochs"] if "ema_test_tta" in e)
        per_grade = [roc_auc_score(yt == k, p[:, k]) for k in range(5)]
        changes = {k: v for k, v in rec["cfg"].items() if base.get(k) != v and k not in ("name", "seed")}
        changes.update({k: rec[k] for k, d in (("mixup", 0.0), ("rot", 30), ("stem", "std")) if rec.get(k, d) != d})
        row = {"run": name, "changes": changes, "seed": rec["cfg"]["seed"], "epoch": i + 1,
               **{k: m[k] for k in ("acc", "auc", "qwk", "referable_auc")},
               "auc_d8": roc_auc_score(yt, p8, multi_class="ovr"), "auc_per_grade": per_grade,
               "oracle_auc": oracle, "train_seconds": rec["train_seconds"], "threads": rec.get("threads", 1)}
        rows.append(row)
        lines.append(f"| {name} | {', '.join(f'{k}={v}' for k, v in changes.items()) or '-'} | {row['seed']} "
                     f"| {row['epoch']} | {m['acc']:.3f} | {m['auc']:.3f} | {m['qwk']:.3f} | "
                     f"{m['referable_auc']:.3f} | {row['auc_d8']:.3f} | "
                     f"{'/'.join(f'{a:.2f}' for a in per_grade)} | {oracle:.3f} | "
                     f"{rec['train_seconds']:.0f} ({row['threads']}) |")
    yt = np.array(next(iter(recs.values()))["y_test"])
    ens = []
    for n in range(2, len(probs) + 1):
        for names in itertools.combinations(probs, n):
            m = classification_metrics(yt, np.mean([probs[k] for k in names], 0))
            ens.append({"runs": list(names), "acc": m["acc"], "auc": m["auc"], "qwk": m["qwk"]})
    if ens:
        top = max(ens, key=lambda e: e["auc"])
        lines += ["", f"Ensembles (mean probability) of 2 to {len(probs)} of these runs, {len(ens)} in all: "
                  f"test AUC {min(e['auc'] for e in ens):.3f} to {top['auc']:.3f} "
                  f"(best: {' + '.join(top['runs'])}, ACC {top['acc']:.3f}). "
                  f"Best single run: {max(r['auc'] for r in rows):.3f}."]
    out.mkdir(parents=True, exist_ok=True)
    runs.atomic_write(out / "ceiling.md", ("\n".join(lines) + "\n").encode())
    runs.write_json(out / "ceiling.json", {"runs": rows, "ensembles": ens})
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="train one variant and keep its per-epoch logits")
    r.add_argument("--dir", type=Path, required=True)
    r.add_argument("name")
    r.add_argument("overrides", nargs="*", help="KEY=VALUE: a TrainConfig field, mixup, rot or stem")
    s = sub.add_parser("report", help="score every run record in --dir")
    s.add_argument("--dir", type=Path, required=True)
    s.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = p.parse_args(argv)
    if args.cmd == "run":
        args.dir.mkdir(parents=True, exist_ok=True)
        train_variant(args.dir / f"{args.name}.json", **parse_overrides(args.overrides))
    else:
        print("\n".join(report(args.dir, args.out)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
