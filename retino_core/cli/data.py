"""Commands over datasets: ``validate``."""

from __future__ import annotations

import json
import sys

from ..errors import DataError
from .common import EXIT_USAGE


def add_parsers(sub) -> None:
    p = sub.add_parser("validate", help="check a dataset: CSVs, labels, patients, duplicates and every image "
                                        "file; every problem at once")
    p.add_argument("data", help="'retinamnist', a lab folder, a labels .csv or an .npz")
    p.add_argument("--deep", action="store_true",
                   help="decode every image in full and hash it (finds truncated files and duplicate images "
                        "across splits; minutes for 35k photos, seconds again from the cache)")
    p.add_argument("--allow-duplicates", action="store_true",
                   help="with --deep: identical images in two splits are a warning, not an error")
    p.add_argument("--allow-label-conflicts", action="store_true",
                   help="with --deep: the same or a near-identical photo under different grades is a warning, "
                        "not an error (when several graders' readings are listed on purpose)")
    p.add_argument("--patient-column", help="the labels CSV's column holding the patient id")
    p.add_argument("--patient-regex",
                   help="a regular expression over the image name; its first group (or the match) is the patient id")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0, help="of the carved splits (default 0, as training)")
    p.add_argument("--workers", type=int, help="decoding processes for --deep (default: all cores)")
    p.add_argument("--no-cache", action="store_true", help="with --deep: neither read nor write the hash cache")
    p.add_argument("--json", action="store_true", help="the report as one JSON object on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_validate)


def cmd_validate(args) -> int:
    from ..data.sources import open_source
    from ..data.splits import DatasetInvalid
    from ..data.integrity import check_source_images
    from ..data.patients import describe_patients
    from ..data.problems import Report

    def check(src, report) -> None:  # the image files too, even when the CSVs have errors
        try:
            check_source_images(src, report, deep=args.deep, allow_duplicates=args.allow_duplicates,
                                allow_conflicts=args.allow_label_conflicts, workers=args.workers,
                                use_cache=not args.no_cache,
                                progress=not (args.quiet or args.json) and sys.stderr.isatty())
        except KeyboardInterrupt:
            if not args.deep or args.no_cache:
                raise
            raise KeyboardInterrupt("the hashes made so far are kept in the cache; run the same command "
                                    "again to go on from there") from None

    try:
        source = open_source(args.data, args.val_fraction, args.seed, patient_column=args.patient_column,
                             patient_regex=args.patient_regex)
    except DatasetInvalid as err:
        if err.found is not None:
            check(err.found, err.report)
        if args.json:
            print(json.dumps(err.report.to_dict(), indent=2))
            return EXIT_USAGE
        raise DataError(err.report.text()) from None
    except DataError as err:
        if not args.json:
            raise
        report = Report(source=str(args.data))
        report.add("dataset cannot be opened", str(args.data), str(err))
        print(json.dumps(report.to_dict(), indent=2))
        return EXIT_USAGE
    report = source.report
    check(source, report)
    report.info["counts"] = {name: len(split) for name, split in source.splits.items()}
    report.info["notes"] = source.notes
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return EXIT_USAGE if report.errors else 0
    counts = ", ".join(f"{name} {len(split):,}" for name, split in source.splits.items())
    checked = ("every image decoded and hashed" if args.deep
               else "every image header read; --deep decodes them and finds duplicates")
    if source.kind == "retinamnist":
        checked = "images in the npz" + ("; every one hashed" if args.deep else "; --deep finds duplicates")
    images = report.info["images"]
    if images.get("from_cache"):
        checked += f", {images['from_cache']:,} from the cache"
    verdict = "not usable" if report.errors else "ok"
    print(f"{source.name}: {verdict} ({counts}; {checked})")
    for line in describe_patients(report.info.get("patients", {})):
        print(line)
    for note in source.notes:
        print(f"note: {note}")
    if report.problems:
        print(report.text(), file=sys.stderr if report.errors else sys.stdout)
    return EXIT_USAGE if report.errors else 0
