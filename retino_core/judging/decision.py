"""The one answer per photo. Every door calls ``decide``: Classify (screen and CSV), ``predict``
(text, ``--json``, ``--out``), batch grading, the exported ``predict_onnx.py`` (which carries
this module's source) and the model card's examples.

An answer is one of three:

- **graded**: ``grade``, ``grade_name`` and ``refer`` are set;
- **not graded**: the photo failed a check (``reasons``, one sentence each);
- **no usable model**: the model's trust verdict is not "usable".

Only a graded photo has a grade and a referral; otherwise they are None (empty in a CSV).
What the model would have said is kept apart, under ``would_say_*``.

**Referral first.** ``refer`` is P(grade >= 2) against the run's operating threshold; the
grade is then the most probable grade on that side (0-1 when not referred, 2-4 when referred),
so a grade below 2 never comes with ``refer=True`` nor one of 2 or more with ``refer=False``.

numpy-free even: plain Python over a few floats. The photo checks it reads come from
``judging.photo`` and ``judging.detail`` (``check_photo``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from PIL import Image

from ..config import GRADE_NAMES, REFERABLE_GRADE
from .detail import check_detail
from .photo import ImageCheck, field_of_view

GRADED, NOT_GRADED, NO_USABLE_MODEL = "graded", "not graded", "no usable model"


# Refer when P(grade >= 2) >= 0.5 where validation cannot support a threshold of its own: the
# referable side is then more probable than not (README, "The referral threshold").
DEFAULT_THRESHOLD = 0.5


# One column a grade, named after it: p_no_dr, p_mild, p_moderate, p_severe, p_proliferative.
PROBABILITY_COLUMNS = tuple("p_" + name.lower().replace(" ", "_") for name in GRADE_NAMES)


@dataclass(frozen=True)
class OperatingPoint:
    """The referral threshold in force for a run (or an ensemble) and whether validation
    supports it. ``threshold`` is what every door applies: the one chosen on validation when
    ``reliable``, else DEFAULT_THRESHOLD, with ``why`` saying what validation lacked."""

    threshold: float = DEFAULT_THRESHOLD
    reliable: bool = False
    why: str = "no validation predictions to choose a threshold on"
    target_sensitivity: float = 0.90
    chosen_threshold: float | None = None  # what validation picked, trusted or not
    val_referable: int = 0
    val_non_referable: int = 0
    val_sensitivity: float | None = None  # at ``threshold``
    val_specificity: float | None = None
    test_sensitivity: float | None = None
    test_specificity: float | None = None

    @property
    def threshold_from(self) -> str:
        """"validation" or "default"."""
        return "validation" if self.reliable else "default"

    def sentence(self) -> str:
        """The operating point in one sentence, for wherever a referral is shown."""
        if self.reliable:
            return (f"Refer when P(grade ≥ 2) ≥ {self.threshold:.3f}, the threshold that reaches "
                    f"{self.target_sensitivity:.0%} sensitivity on validation.")
        return (f"No reliable operating point: {self.why}. Referral uses the default threshold instead: refer "
                f"when P(grade ≥ 2) ≥ {self.threshold:.2f}.")

    def to_dict(self) -> dict:
        return {**{f.name: getattr(self, f.name) for f in fields(self)}, "threshold_from": self.threshold_from}

    @classmethod
    def from_dict(cls, d: dict) -> "OperatingPoint":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass(frozen=True)
class Decision:
    """One photo's answer (module doc). ``to_dict`` gives the keys of the CSV and JSON rows."""

    status: str  # GRADED, NOT_GRADED or NO_USABLE_MODEL
    grade: int | None
    refer: bool | None
    probabilities: tuple[float, ...]
    referable_probability: float
    threshold: float
    threshold_from: str
    would_say_grade: int
    would_say_refer: bool
    reasons: tuple[str, ...] = ()  # why it is not graded
    warnings: tuple[str, ...] = ()  # about this photo's answer only
    in_distribution: bool | None = None
    ood_score: float | None = None

    @property
    def graded(self) -> bool:
        return self.status == GRADED

    @property
    def grade_name(self) -> str | None:
        return None if self.grade is None else GRADE_NAMES[self.grade]

    @property
    def would_say_grade_name(self) -> str:
        return GRADE_NAMES[self.would_say_grade]

    def to_dict(self) -> dict:
        """Plain values (None where a CSV cell is empty), keyed as the CSV and JSON rows are."""
        return {"status": self.status, "grade": self.grade, "grade_name": self.grade_name, "refer": self.refer,
                "reasons": list(self.reasons), "referable_probability": round(self.referable_probability, 6),
                "threshold": round(self.threshold, 6), "threshold_from": self.threshold_from,
                **{c: round(p, 6) for c, p in zip(PROBABILITY_COLUMNS, self.probabilities)},
                "would_say_grade": self.would_say_grade, "would_say_grade_name": self.would_say_grade_name,
                "would_say_refer": self.would_say_refer, "in_distribution": self.in_distribution,
                "ood_score": None if self.ood_score is None else round(self.ood_score, 2),
                "warnings": list(self.warnings)}


def referral_first(probabilities, threshold: float) -> tuple[bool, int]:
    """(refer, grade): refer when P(grade >= 2) >= ``threshold``; the grade is the most probable
    one on that side (the first of equals)."""
    p = [float(v) for v in probabilities]
    refer = sum(p[REFERABLE_GRADE:]) >= threshold
    side = range(REFERABLE_GRADE, len(p)) if refer else range(REFERABLE_GRADE)
    return refer, max(side, key=p.__getitem__)


def decide(probabilities, check: ImageCheck | None = None, operating_point: OperatingPoint | None = None,
           usable: bool = True) -> Decision:
    """The answer for one photo from its five probabilities, its checks (``check_photo``; None:
    not checked), the run's operating point (None: the default threshold) and whether the
    model (every member of an ensemble) is usable."""
    p = tuple(float(v) for v in probabilities)
    point = operating_point or OperatingPoint(why="no operating point was given")
    refer, grade = referral_first(p, point.threshold)
    reasons = tuple(check.reasons) if check is not None else ()
    status = NOT_GRADED if reasons else GRADED if usable else NO_USABLE_MODEL
    warnings = ()
    top = max(range(len(p)), key=p.__getitem__)
    if status == GRADED and top != grade:
        warnings = (f"The single most probable grade is {top} · {GRADE_NAMES[top]} ({p[top]:.0%}), but P(grade ≥ 2) "
                    f"= {sum(p[REFERABLE_GRADE:]):.0%} is {'at or above' if refer else 'below'} the referral threshold "
                    f"{point.threshold:.2f}: the grade is the most probable one on that side.",)
    graded = status == GRADED
    return Decision(status, grade if graded else None, refer if graded else None, p, sum(p[REFERABLE_GRADE:]),
                    point.threshold, point.threshold_from, grade, refer, reasons, warnings,
                    None if check is None else check.in_distribution, None if check is None else check.ood_score)


def check_photo(img: Image.Image, ood_score: float | None = None, ood_threshold: float | None = None) -> ImageCheck:
    """Every check a photo must pass to be graded: its field of view, then (when that holds) its
    retinal detail, and the distance of its features when the model gives one."""
    fov = field_of_view(img)
    return ImageCheck(img.size, fov, check_detail(img) if fov.ok else None, ood_score, ood_threshold)


def combine(checks) -> ImageCheck:
    """One check for a photo graded by several models (an ensemble): the photo checks are the
    same for all; of the feature checks, the one farthest from its own model's training photos."""
    def ratio(c: ImageCheck) -> float:
        return -1.0 if c.ood_score is None or not c.ood_threshold else c.ood_score / c.ood_threshold

    return max(checks, key=ratio)
