"""A model card per run, in Markdown and HTML: what the grader is for and not for, the data,
the recipe, the test numbers with their intervals, the referable-DR operating point next to
published screening systems, calibration, the trust verdict and the limitations in plain words.

Everything comes from the run folder (summary.json, config.json, predictions.csv): no torch.
A model that is not usable says so in its first lines.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .. import runs
from ..config import GRADE_NAMES
from ..data.patients import straddling
from ..data.sources import source_of
from ..errors import DataError
from ..judging import comparison, decision, external, metrics, operating, trust
from . import display

CARD_MD, CARD_HTML = "model_card.md", "model_card.html"


# The Evaluation page starts from the threshold that reaches this sensitivity on validation.
# Under this many pixels a side, the lesions of mild and proliferative DR are gone (README, Results).
FINE_DETAIL_PX = 256


CI_METRICS = (("acc", "accuracy"), ("auc", "macro AUC (one grade vs the rest)"), ("qwk", "quadratic weighted kappa"),
              ("macro_f1", "macro F1"), ("referable_auc", "referable-DR AUC (grade ≥ 2)"))


def referable_point(run_dir: Path) -> dict:
    """The run's operating point (operating.of_run: the threshold every door applies) with, on
    every split, its sensitivity and specificity (95 % Wilson intervals), PPV and NPV there."""
    point = operating.of_run(Path(run_dir))
    out: dict = point.to_dict()
    temperature = float((runs.read_json(Path(run_dir) / "summary.json", {}) or {}).get("temperature") or 1.0)
    for split, s in operating.load_scores(run_dir).items():
        op = metrics.operating_point(s.labels, s.probs(temperature), point.threshold)
        op["sensitivity_ci"] = list(trust.wilson_interval(op["tp"], op["tp"] + op["fn"]))
        op["specificity_ci"] = list(trust.wilson_interval(op["tn"], op["tn"] + op["fp"]))
        out[split] = op
    return out


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass
class Notice:
    kind: str  # success / warning / error / info, as trust.notice gives it
    text: str


@dataclass
class Section:
    title: str
    blocks: list = field(default_factory=list)  # str paragraphs, list[str] bullets, Table, Notice


@dataclass
class Card:
    title: str
    lead: list  # blocks above the first section: the verdict first
    sections: list[Section]
    facts: dict  # the numbers the card shows, keyed as in summary.json


_SPLITS = {"val": "validation", "test": "test"}


def _ci(interval) -> str:
    return f"{display.percent(interval[0])} to {display.percent(interval[1])}" if interval else "–"


def _ci_number(interval) -> str:
    return f"{display.number(interval[0])} to {display.number(interval[1])}" if interval else "–"


def _is_retinamnist(spec: str) -> bool:
    return spec.strip().lower() in ("", "retinamnist") or spec.strip().lower().endswith(".npz")


def _patients(config: dict) -> str:
    """What is known about patients across the splits, from the data set itself."""
    spec = str(config.get("data", "retinamnist"))
    if _is_retinamnist(spec):
        return ("MedMNIST's official split. The release carries no patient identifiers, so whether photos of one "
                "patient sit on both sides of the split cannot be checked.")
    try:
        source = source_of(config)  # the run's own splits and patient rule
    except DataError as err:
        return f"Not counted: the data set cannot be opened here ({err})."
    if (source.report.info.get("patients") or {}).get("by_image"):
        return "No patient id was recognised in the image names, so the splits were made by image."
    ids = {name: split.patient_ids() for name, split in source.splits.items()}
    counts = ", ".join(f"{_SPLITS.get(name, name)} {len(set(v)):,}" for name, v in ids.items())
    both = straddling(ids)
    if not both:
        return f"Patients per split: {counts}; no patient has photos on two sides."
    return (f"Patients per split: {counts}. Photos of one patient on two sides: " + "; ".join(
        f"{len(v):,} between {' and '.join(_SPLITS.get(k, k) for k in pair.split('/'))}" for pair, v in both.items())
        + " (the data set's own split; where retino carves one, a patient stays on one side).")


def _split_text(config: dict, summary: dict) -> str:
    selected = summary.get("selected_on", "val")
    spec = str(config.get("data", "retinamnist"))
    carved = (f"fraction {config.get('val_fraction', 0.1)}, stratified by grade, both eyes of a patient on one side, "
              f"seed {config.get('seed', 0)}")
    if _is_retinamnist(spec):
        how = "the official train / validation / test split"
    elif spec.strip().lower().endswith(".csv"):
        how = f"train, validation and test carved from one labels CSV ({carved})"
    else:
        how = f"the lab's train / test split, validation carved from its training images ({carved})"
    return (f"{how}; the checkpoint was chosen on {_SPLITS.get(selected, selected)} "
            f"({config.get('select_metric', '?')}) and the temperature fitted there; test only reports")


def _data_section(config: dict, summary: dict) -> Section:
    t = summary.get("trained_on") or {}
    native = t.get("native_size")
    size = config.get("image_size") or "?"
    counts = [f"train {t['train_images']:,}" if t.get("train_images") else None,
              f"validation {summary['val_n']:,}" if summary.get("val_n") else None,
              f"test {summary['test_n']:,}" if summary.get("test_n") else None]
    support = summary.get("test_support") or []
    rows = [["source", f"{summary.get('data_name') or t.get('name', '?')} ({config.get('data', '?')})"],
            ["images", ", ".join(c for c in counts if c) or "–"],
            ["resolution", (f"photos of {native[0]}×{native[1]} px" if native else "photo size unknown")
             + f", shown to the model at {size}×{size} px"],
            ["split", _split_text(config, summary)],
            ["patients", _patients(config)]]
    if support:
        rows.append(["test images per grade", ", ".join(f"{GRADE_NAMES[g]} {n:,}" for g, n in enumerate(support))])
    return Section("Data", [Table(["", ""], rows)])


def _recipe_section(config: dict, summary: dict) -> Section:
    c = config
    rows = [["architecture", f"{c.get('arch', '?')}, {'ImageNet-pretrained' if c.get('pretrained') else 'from scratch'}"],
            ["epochs", f"{c.get('epochs', '?')} (checkpoint of epoch {summary.get('best_epoch', '?')} kept, "
                       f"chosen on {_SPLITS.get(summary.get('selected_on'), '?')} {c.get('select_metric', '')})"],
            ["optimiser", f"{c.get('optimizer', '?')}, learning rate {c.get('lr', '?')}, weight decay "
                          f"{c.get('weight_decay', '?')}, {c.get('scheduler', '?')} schedule, batch {c.get('batch_size', '?')}"],
            ["loss", f"{c.get('loss', '?')}, label smoothing {c.get('label_smoothing', 0)}, sampler {c.get('sampler', '?')}"],
            ["augmentation", f"{c.get('augment', '?')}; retina preprocessing {c.get('preprocess', 'none')}"],
            ["weight average (EMA)", str(c.get("ema") or "off")],
            ["flip averaging at test time", "on" if summary.get("tta") else "off"],
            ["calibration temperature", display.number(summary.get("temperature"), 3)],
            ["preset", str(c.get("preset", "?"))]]
    return Section("Recipe", [Table(["", ""], rows)])


def _results_section(summary: dict, ci: dict) -> Section:
    """``ci``: the run's intervals (comparison.intervals)."""
    rows = []
    for key, label in CI_METRICS:
        value = summary.get(f"test_{key}")
        interval = ci.get(f"test_{key}_ci")
        if key == "acc":
            rows.append([label, display.percent(value), _ci(interval)])
            rows.append(["always the commonest training grade", display.percent(summary.get("test_majority_acc")), "–"])
        else:
            rows.append([label, display.number(value), _ci_number(interval)])
    method = ci.get("test_ci_method") or "Wilson score interval for accuracy; none computed for the others"
    support = summary.get("test_support") or [None] * len(GRADE_NAMES)

    def per_class(key: str, g: int) -> str:  # a grade without test images has no recall to speak of
        values = summary.get(f"test_{key}") or [None] * len(GRADE_NAMES)
        return display.number(values[g] if support[g] else None, 2)

    per_grade = [[f"{g} {name}", "?" if support[g] is None else f"{support[g]:,}",
                  *(per_class(k, g) for k in ("recall", "precision", "f1"))] for g, name in enumerate(GRADE_NAMES)]
    return Section("Test results", [
        f"{summary.get('test_n', '?')} test images; intervals are 95 % ({method}).",
        Table(["metric", "value", "95 % interval"], rows),
        "**Per grade** (recall: the share of each true grade that the model finds):",
        Table(["grade", "test images", "recall", "precision", "F1"], per_grade)])


def _operating_section(point: dict) -> Section:
    title = "Referable DR (grade ≥ 2): operating point"
    rows = []
    for split, label in (("val", "this model, validation"), ("test", "this model, test")):
        op = point.get(split)
        if op:
            rows.append([label, f"{display.percent(op['sensitivity'])} ({_ci(op['sensitivity_ci'])})",
                         f"{display.percent(op['specificity'])} ({_ci(op['specificity_ci'])})",
                         display.percent(op["ppv"]), display.percent(op["npv"]), f"{op['tp'] + op['fn'] + op['tn'] + op['fp']:,}"])
    for ref in operating.REFERENCE_POINTS:
        rows.append([ref.label, display.percent(ref.sensitivity), display.percent(ref.specificity), "–", "–", ref.source])
    if point["reliable"]:
        lead = (f"Refer when P(grade ≥ 2) ≥ **{point['threshold']:.3f}**: the highest threshold that reaches "
                f"{point['target_sensitivity']:.0%} sensitivity on the validation split (calibrated probabilities), then "
                "applied unchanged to test. Intervals are 95 % Wilson intervals.")
    else:
        chosen = point.get("chosen_threshold")
        lead = (f"**No reliable operating point**: {point['why']}. The grader refers at the default threshold, "
                f"P(grade ≥ 2) ≥ **{point['threshold']:.2f}** (the referable side more probable than not)"
                + (f"; validation alone would have chosen {chosen:.3f}" if chosen is not None else "")
                + ". The numbers below are at the default threshold; intervals are 95 % Wilson intervals.")
    return Section(title, [
        lead, Table(["", "sensitivity", "specificity", "PPV", "NPV", "images / source"], rows) if point.get("val") or
        point.get("test") else "No validation or test logits in predictions.csv to measure it on.",
        "The grade comes after the referral: the most probable grade on the referred side (2-4) or on the other "
        "(0-1), so a grade and its referral never contradict each other.",
        "The published systems were measured on other populations, cameras and reference standards: "
        "context, not a like-for-like target."])


EXAMPLES = 5  # test photos shown in "How it answers"


def _examples_section(run_dir: Path, summary: dict, verdict: dict | None) -> Section:
    """The first test photos answered by decision.decide, as the grader answers (no photo checks:
    these are the run's own test photos)."""
    point = operating.of_run(run_dir)
    usable = trust.is_usable_verdict(verdict)
    test = operating.load_scores(run_dir).get("test")
    blocks: list = ["Every photo gets one answer: **graded** (a grade and a referral), **not graded** (it failed a "
                    "photo check: field of view, retinal detail or its features; the reasons are given) or **no usable "
                    "model**. Only a graded photo has a grade and a referral; what the model would say otherwise is "
                    "kept apart (`would_say_*`)."]
    if test is None:
        return Section("How it answers", blocks + ["No test logits in predictions.csv to show examples from."])
    probs = test.probs(float(summary.get("temperature") or 1.0))
    rows = []
    for k in range(min(EXAMPLES, len(test.labels))):
        d = decision.decide(probs[k], None, point, usable)
        answer = (f"grade {d.grade} · {d.grade_name}, {'refer' if d.refer else 'do not refer'}" if d.graded else
                  f"{d.status}; would say {d.would_say_grade} · {d.would_say_grade_name} (not a grade)")
        rows.append([test.names[k], f"{test.labels[k]} · {GRADE_NAMES[test.labels[k]]}",
                     display.percent(d.referable_probability), answer])
    return Section("How it answers", blocks + [f"The first {len(rows)} test photos:",
                                               Table(["photo", "true grade", "P(grade ≥ 2)", "answer"], rows)])


def _calibration_section(run_dir: Path, summary: dict) -> Section:
    temperature = summary.get("temperature")
    scores = operating.load_scores(Path(run_dir))
    rows = []
    for split, name in (("val", "validation"), ("test", "test")):
        if f"{split}_ece" not in summary:
            continue
        after_nll = metrics.nll(scores[split].labels, scores[split].probs(temperature)) if split in scores else None
        rows.append([name, display.number(summary.get(f"{split}_ece"), 4), display.number(summary.get(f"{split}_ece_calibrated"), 4),
                     display.number(summary.get(f"{split}_loss"), 4), display.number(after_nll, 4)])
    check = operating.calibration_check(run_dir, temperature)
    return Section("Calibration", [
        f"Temperature scaling divides the logits by one number, {display.number(temperature, 3)}, fitted on validation: "
        "it changes how confident the probabilities are, never which grade wins. The exported model includes it."
        + (f" {check['sentence']}" if check else ""),
        Table(["split", "ECE before", "ECE after", "NLL before", "NLL after"], rows)])


def _trust_section(verdict: dict | None, summary: dict) -> Section:
    reasons = "its reasons are at the top of this card" if verdict and verdict["reasons"] else "no rule fired"
    blocks: list = [f"Verdict: **{trust.label(verdict)}** ({reasons}). One of usable, weak or no better than "
                    "guessing, from the test results of the checkpoint chosen on validation: collapse onto one grade, "
                    "accuracy against always answering the commonest grade (exact binomial test), macro AUC, "
                    "kappa, calibration and the size of the test set. It says whether the numbers show skill on "
                    "this test set, not that the model is fit for screening."]
    detector = summary.get("ood")
    if detector:
        blocks.append(f"Photos unlike the training ones: the Mahalanobis distance of the model's features is "
                      f"compared with {display.number(detector.get('threshold'), 1)}, the "
                      f"{100 * detector.get('quantile', 0.99):.0f}th percentile on the "
                      f"{_SPLITS.get(detector.get('calibrated_on'), '?')} split; "
                      f"it flags {display.percent(detector.get('test_flagged_share'))} of the test photos. A photo that fails "
                      "it, is not a round field of view on black or holds no retinal detail (a plain, shaded, blurred "
                      "or noisy disc) is not graded.")
    return Section("How far to trust it", blocks)


def _limitations(config: dict, summary: dict, verdict: dict | None, run_dir: Path) -> Section:
    t = summary.get("trained_on") or {}
    size = int(config.get("image_size") or 0)
    source = summary.get("data_name") or t.get("name") or "one data set"
    items = []
    if size and size < FINE_DETAIL_PX:
        items.append(f"**Resolution.** It sees every photo at {size}×{size} px. Microaneurysms (mild DR) and fine new "
                     "vessels (proliferative DR) are a few pixels wide in a full-size photo and are gone at this "
                     "size, so it cannot see the lesions that define those grades.")
    else:
        items.append(f"**Resolution.** It sees every photo at {size}×{size} px: a larger photo is shrunk to that "
                     f"first, and detail finer than (its side ÷ {size}) pixels is lost to the model.")
    items.append(f"**One data source.** Training, validation and test photos all come from {source}. Its numbers say "
                 "nothing about other cameras, clinics, ethnicities or ages.")
    found = external.elsewhere(run_dir)
    if found:
        items.append("**External evaluation** (`evaluate`, graded as every door grades: refused photos counted, not "
                     "scored): " + "; ".join(external.sentence(r) for r in found) + ". Not prospective, and not "
                     "against a clinical reference standard beyond those photos' labels.")
    else:
        items.append("**No external validation.** It has not been tested on an independent data set, nor "
                     "prospectively, nor against a clinical reference standard; the test split comes from the "
                     "training source (`python -m retino_core evaluate RUN --data DATA` measures it on other photos).")
    support = summary.get("test_support") or [0] * len(GRADE_NAMES)
    weak = [f"{GRADE_NAMES[g]} ({display.number(r, 2)})" for g, r in enumerate(summary.get("test_recall") or [])
            if r is not None and r < 0.5 and support[g]]
    absent = [GRADE_NAMES[g] for g, n in enumerate(support) if not n]
    if absent and summary.get("test_support"):
        items.append(f"**Untested grades.** The test split has no {' or '.join(absent)} photo: nothing is known "
                     "about how it grades them.")
    if weak:
        items.append(f"**Missed grades.** It finds fewer than half of the test images of: {', '.join(weak)} (recall).")
    checks = (verdict or {}).get("checks") or {}
    if checks.get("n") and checks["n"] < 1000 and checks.get("acc_ci"):
        items.append(f"**Small test set.** With {checks['n']:,} test images, its accuracy could lie anywhere from "
                     f"{_ci(checks['acc_ci'])}.")
    items.append(f"**Calibration and threshold** were fitted on {summary.get('val_n', 0):,} validation images of the "
                 "same source; on other photos both may be off." if summary.get("val_n") else
                 "**Calibration and threshold** come from the training source; on other photos both may be off.")
    items.append("**Scope.** Five DR grades only: no diabetic macular oedema, other eye disease or image-quality grading.")
    return Section("Limitations", [items])


def _verdict_notice(verdict: dict | None) -> Notice:
    """The verdict, first thing on the card: a model that is not usable says so in its first words."""
    kind = trust.NOTICE_KINDS.get(verdict["verdict"], "info") if verdict else "info"
    basis = (verdict or {}).get("basis") or "no test results"
    basis = basis[:1].upper() + basis[1:]
    if trust.is_usable_verdict(verdict):
        text = f"**Usable** on its test set. {basis}."
    else:
        text = f"**Not fit for use: this model is {trust.label(verdict)}.** {basis}."
    reasons = (verdict or {}).get("reasons") or []
    return Notice(kind, text + "".join(f"\n- {r}" for r in reasons))


def build(run_dir: str | Path, export: dict | None = None) -> Card:
    """The card of a finished run (``export``: the files and checks of an export, for its copy)."""
    run = runs.load_run(Path(run_dir))
    summary, config = run.summary, run.config
    if not summary:
        raise runs.RunError(f"run {run.run_id} has no summary.json: it has not finished, so there is nothing to describe")
    verdict = trust.of_summary(summary)
    point = referable_point(run.path)
    arch = "ResNet50" if run.arch == "resnet50" else "ResNet18" if run.arch == "resnet18" else run.arch
    t = summary.get("trained_on") or {}
    lead = [_verdict_notice(verdict),
            f"{arch} ({'ImageNet-pretrained' if run.pretrained else 'from scratch'}) grading colour fundus photographs "
            f"into the five diabetic-retinopathy grades: " + ", ".join(f"{g} {n}" for g, n in enumerate(GRADE_NAMES)) + ". "
            f"Run {run.run_id}; card generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC from its summary.json."]
    sections = [
        Section("Intended use", [[
            "Research, teaching and building screening pipelines: grading fundus photographs into the five DR grades, "
            "and flagging referable DR (grade ≥ 2, moderate or worse) for a qualified grader to review.",
            f"Photographs like its training ones: {summary.get('data_name') or t.get('name', 'its data set')}, "
            f"shown to it at {config.get('image_size', '?')}×{config.get('image_size', '?')} px."]]),
        Section("Not intended use", [[
            "Diagnosis, or any screening decision without a qualified grader: it has not been validated clinically.",
            "Photographs from other cameras, clinics or populations until it has been validated on them; photos that "
            "fail its field-of-view, retinal-detail or feature check (the grader does not grade them).",
            "Other eye disease (glaucoma, macular degeneration, occlusions) or diabetic macular oedema: it knows only "
            "the five DR grades and will give such a photo one of them.",
            "Grading image quality: it refuses photos with no retinal detail (plain, shaded, far too blurred or "
            "noisy discs), but does not grade how good a photo is."]]),
        _data_section(config, summary), _recipe_section(config, summary), _results_section(summary, comparison.intervals(run)),
        _operating_section(point), _examples_section(run.path, summary, verdict),
        _calibration_section(run.path, summary), _trust_section(verdict, summary),
        _limitations(config, summary, verdict, run.path)]
    if export:
        sections.append(_export_section(export))
    facts = {key: summary.get(key) for key in summary if key.startswith("test_") or key in ("temperature", "val_n")}
    facts.update(verdict=trust.label(verdict), referable=point)
    return Card(f"Model card: {arch} diabetic-retinopathy grader ({run.run_id})", lead, sections, facts)


def _export_section(export: dict) -> Section:
    verified = export.get("verified") or {}
    return Section("This export", [
        f"Format {export['format']} ({export['file']}); input `{export['input']}`; outputs "
        + ", ".join(f"`{o}`" for o in export["outputs"]) + ". Normalisation, flip averaging and the temperature are "
        "inside the model; resize with Pillow's bilinear filter as `preprocessing.json` says.",
        f"Checked against the app's own predictor on {verified.get('images', '?')} {verified.get('on', '')} images: "
        f"largest difference in a probability {verified.get('max_abs_diff', float('nan')):.1e}.",
        "Files: " + ", ".join(f"`{f}`" for f in export.get("files", [])) + "."])


def _md_block(block) -> str:
    if isinstance(block, Notice):
        return "\n".join(f"> {line}" if line else ">" for line in block.text.splitlines())
    if isinstance(block, Table):
        head = "| " + " | ".join(block.header) + " |\n|" + "---|" * len(block.header)
        return head + "".join("\n| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in block.rows)
    if isinstance(block, list):
        return "\n".join(f"- {item}" for item in block)
    return str(block)


def to_markdown(card: Card) -> str:
    """The card as GitHub-flavoured Markdown."""
    parts = [f"# {card.title}", *map(_md_block, card.lead)]
    for section in card.sections:
        parts += [f"## {section.title}", *map(_md_block, section.blocks)]
    return "\n\n".join(parts) + "\n"


def _inline(text: str) -> str:
    escaped = html.escape(text)
    escaped = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", escaped)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", escaped)


def _html_block(block) -> str:
    if isinstance(block, Notice):
        lines = block.text.splitlines()
        paras = "".join(f"<p>{_inline(line)}</p>" for line in lines if line and not line.startswith("- "))
        items = [line[2:] for line in lines if line.startswith("- ")]
        return f'<div class="notice {block.kind}">{paras}{_html_block(items) if items else ""}</div>'
    if isinstance(block, Table):
        head = "".join(f"<th>{_inline(h)}</th>" for h in block.header)
        body = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in block.rows)
        head = f"<thead><tr>{head}</tr></thead>" if any(block.header) else ""  # a key-value table has none
        return f"<table>{head}<tbody>{body}</tbody></table>"
    if isinstance(block, list):
        return "<ul>" + "".join(f"<li>{_inline(item)}</li>" for item in block) + "</ul>"
    return f"<p>{_inline(str(block))}</p>"


STYLE = """body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;line-height:1.45;color:#222}
table{border-collapse:collapse;margin:.5rem 0 1rem}td,th{border:1px solid #ccc;padding:.3rem .6rem;text-align:left;vertical-align:top}
th{background:#f4f4f4}.notice{border-left:.4rem solid;padding:.2rem 1rem;margin:1rem 0}
.notice.error{border-color:#c62828;background:#fdecea}.notice.warning{border-color:#ef6c00;background:#fff4e5}
.notice.success{border-color:#2e7d32;background:#edf7ed}.notice.info{border-color:#1565c0;background:#e8f1fb}"""


def to_html(card: Card) -> str:
    """The card as one self-contained HTML page."""
    body = [f"<h1>{_inline(card.title)}</h1>", *map(_html_block, card.lead)]
    for section in card.sections:
        body += [f"<h2>{_inline(section.title)}</h2>", *map(_html_block, section.blocks)]
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_inline(card.title)}</title>'
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def write(card: Card, folder: Path) -> list[Path]:
    """model_card.md and model_card.html into ``folder`` (each written whole, then renamed)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, text in ((CARD_MD, to_markdown(card)), (CARD_HTML, to_html(card))):
        runs.atomic_write(folder / name, text.encode("utf-8"))
        out.append(folder / name)
    return out
