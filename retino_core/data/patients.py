"""Patient ids: explicit (a CSV column or a regular expression) or recognised from the common
file-name layouts (``PATIENT_RULES``), and the patients found on two sides of a split.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass
from typing import Sequence


def patient_of(name: str) -> str:
    """The patient an image belongs to, by the file-name layouts of integrity.PATIENT_RULES
    (``10_left`` -> ``10``, ``c01_Patient007_R`` -> ``patient 7``); else the name itself."""
    return patient_rule(name)[0]


@dataclass(frozen=True)
class PatientRule:
    name: str
    pattern: str
    prefix: str = ""  # put before group 1 so that ids of different rules never collide

    def match(self, stem: str) -> str | None:
        m = re.search(self.pattern, stem, re.IGNORECASE)
        if not m:
            return None
        if not m.groups():
            return m.group(0)
        g = m.group(1)
        return self.prefix + (str(int(g)) if g.isdigit() else g)


# First match wins: the specific layouts before the generic eye suffix.
PATIENT_RULES = (
    PatientRule("DeepDRiD NNN_l1", r"^(\d+)_[lr]\d+$"),
    PatientRule("EyePACS NNN_left", r"^(\d+)_(?:left|right)$"),
    PatientRule("PatientNNN_L/R", r"(?<![a-z])patient[ _-]?(\d+)(?![0-9])", "patient "),
    PatientRule("name_left / name_R", r"^(.+?)[_-](?:left|right|l|r|od|os)$"),
    PatientRule("APTOS id (one image per patient)", r"^[0-9a-f]{12}$"),
)


BY_IMAGE = "no rule: each image its own patient"


def _stem(name: str) -> str:
    base = os.path.basename(str(name))
    stem, suffix = os.path.splitext(base)
    return stem if suffix.lower() in (".jpeg", ".jpg", ".png", ".tif", ".tiff", ".bmp", ".webp") else base


def patient_rule(name: str) -> tuple[str, str]:
    """(patient id, rule name) for an image name by the first rule of PATIENT_RULES that matches."""
    stem = _stem(name)
    for rule in PATIENT_RULES:
        pid = rule.match(stem)
        if pid is not None:
            return pid, rule.name
    return stem, BY_IMAGE


def assign_patients(names: Sequence[str], regex: str | None = None,
                    column: Sequence[str] | None = None) -> tuple[list[str], list[str]]:
    """Patient id and the rule that gave it, per name: an explicit column, a regex, or the rules."""
    if column is not None:
        return [str(c).strip() for c in column], ["patient column"] * len(names)
    if regex:
        explicit = PatientRule("--patient-regex", regex, "")
        ids, rules = [], []
        for n in names:
            pid = explicit.match(_stem(n))
            ids.append(pid if pid is not None else _stem(n))
            rules.append(explicit.name if pid is not None else BY_IMAGE)
        return ids, rules
    pairs = [patient_rule(n) for n in names]
    return [p for p, _ in pairs], [r for _, r in pairs]


def patient_summary(names: Sequence[str], ids: Sequence[str], rules: Sequence[str]) -> dict:
    """How many patients, how many with two or more images, and one example per rule used."""
    per_patient = Counter(ids)
    used: dict[str, dict] = {}
    for n, pid, rule in zip(names, ids, rules):
        entry = used.setdefault(rule, {"images": 0, "example": f"{n} -> {pid}"})
        entry["images"] += 1
    return {"patients": len(per_patient), "with_two_or_more": sum(c >= 2 for c in per_patient.values()),
            "rules": used, "by_image": set(rules) <= {BY_IMAGE, PATIENT_RULES[-1].name}}


def describe_patients(summary: dict) -> list[str]:
    """The summary in words, for the CLI and the pages."""
    if not summary:
        return []
    if summary["by_image"]:
        head = ("patients: no patient id recognised in the image names, so the split is by image, not by patient "
                "(give --patient-column or --patient-regex if the names hold one)")
    else:
        head = (f"patients: {summary['patients']:,} found, {summary['with_two_or_more']:,} with two or more images; "
                "a carved split keeps each patient on one side")
    rules = [f"  {rule}: {e['images']:,} images, e.g. {e['example']}" for rule, e in summary["rules"].items()]
    return [head, *rules]


def straddling(groups: dict[str, Sequence[str]]) -> dict[str, list[str]]:
    """Patients found on two sides, per pair of splits ('train/test': [ids])."""
    sets = {k: set(v) for k, v in groups.items()}
    keys = list(sets)
    out = {}
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            both = sorted(sets[a] & sets[b])
            if both:
                out[f"{a}/{b}"] = both
    return out
