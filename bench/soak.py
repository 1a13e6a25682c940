"""Soak: the app left running with a run training, every page and the Classify upload hit
``--hits`` times in headless Chromium on localhost. Counts errors, samples the app's memory.

    .venv/bin/python bench/soak.py [--hits 500] [--out bench/results/soak.md]

An error is a page that shows a Streamlit exception or a traceback, a page that does not finish
rendering within --timeout seconds, a good upload that is not graded, a bad upload that is not
named in an error message, or a traceback in the server's log. The app's resident memory (RSS,
from /proc) is sampled after the first round of pages (start) and every --sample-every hits.
Everything started here (server, browser, worker, trainer) is stopped at the end.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from appserver import start_app, stop_app  # noqa: E402
from conftest import fundus_image, jpeg_bytes  # noqa: E402
from retino_core.training import launch  # noqa: E402
from retino_core import runs  # noqa: E402
from retino_core.config import make_config  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
RENDERED = """() => {
  const app = document.querySelector('[data-test-script-state]');
  return !!app && app.getAttribute('data-test-script-state') === 'notRunning' && !!document.querySelector('h1');
}"""
BROKEN = """() => document.querySelectorAll('[data-testid=stException]').length
                  + (document.body.innerText.includes('Traceback (most recent call last)') ? 1 : 0)"""


def pages() -> list[str]:
    """URL paths of the app's pages, read from streamlit_app.py (the default page is '')."""
    text = (ROOT / "streamlit_app.py").read_text()
    out = []
    for path, rest in re.findall(r'st\.Page\("pages/(\w+)\.py"([^)]*)\)', text):
        out.append("" if "default=True" in rest else path)
    return out


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def prepare(runs_dir: Path, tmp: Path) -> Path:
    """One finished tiny run (Classify needs a model) and one long run left training."""
    subprocess.run([sys.executable, "-m", "retino_core", "train", "--data", "retinamnist", "--epochs", "1",
                    "--image-size", "32", "--batch-size", "16", "--max-steps-per-epoch", "3",
                    "--num-workers", "0", "--runs-dir", str(runs_dir), "--name", "soak-done", "--quiet"],
                   cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    os.environ["OMP_NUM_THREADS"] = "1"  # the trainer shares the 2 cores with the app and the browser
    cfg = make_config("cpu", data="retinamnist", arch="resnet18", epochs=500, image_size=32, batch_size=16,
                      num_workers=0, name="soak-training")
    run_dir, _ = launch.enqueue(cfg.to_dict(), runs_dir)
    deadline = time.monotonic() + 120
    while runs.read_status(run_dir)["state"] != "running" or not runs.step_rows(run_dir):
        if time.monotonic() > deadline:
            raise SystemExit(f"the training run did not start: {runs.read_status(run_dir)}")
        time.sleep(0.5)
    return run_dir


def soak(url: str, server_pid: int, hits: int, sample_every: int, timeout_s: float, tmp: Path,
         training: Path) -> dict:
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    good, bad = tmp / "eye.jpg", tmp / "notes.png"
    good.write_bytes(jpeg_bytes(fundus_image(256, seed=1, grade=2)))
    bad.write_text("this is not a fundus photograph")
    plan = [("page", p) for p in pages()] + [("upload", "good"), ("upload", "bad")]
    counts = {"page": 0, "upload": 0}
    errors: list[str] = []
    samples: list[tuple[int, int, str]] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        tab = browser.new_page(viewport={"width": 1400, "height": 1000})
        tab.set_default_timeout(timeout_s * 1000)

        def visit(path: str) -> None:
            tab.goto(f"{url}/{path}")
            tab.wait_for_function(RENDERED, polling=50, timeout=timeout_s * 1000)

        def hit(kind: str, what: str) -> None:
            if kind == "page":
                visit(what)
                return
            visit("classify")
            tab.locator("input[type=file]").set_input_files(str(good if what == "good" else bad))
            # The registry's model trained 3 steps: a good upload is graded and shown as no answer.
            text = "None of the chosen models is usable" if what == "good" else "notes.png: not a recognised image"
            tab.get_by_text(text).first.wait_for(timeout=timeout_s * 1000)
            tab.wait_for_function(RENDERED, polling=50, timeout=timeout_s * 1000)

        for kind, what in plan:  # warm-up round, not counted: imports, the model, caches
            hit(kind, what)
        samples.append((0, rss_kib(server_pid), runs.read_status(training)["state"]))
        t0 = time.monotonic()
        for i in range(hits):
            kind, what = plan[i % len(plan)]
            try:
                hit(kind, what)
                if tab.evaluate(BROKEN):
                    errors.append(f"hit {i + 1} ({kind} {what or 'overview'}): exception shown")
            except PlaywrightError as err:
                errors.append(f"hit {i + 1} ({kind} {what or 'overview'}): {str(err).splitlines()[0]}")
            counts[kind] += 1
            if (i + 1) % sample_every == 0 or i + 1 == hits:
                samples.append((i + 1, rss_kib(server_pid), runs.read_status(training)["state"]))
                print(f"{i + 1}/{hits} hits, {len(errors)} errors, app RSS {samples[-1][1] / 1024:.0f} MiB",
                      flush=True)
        seconds = time.monotonic() - t0
        browser.close()
    return {"counts": counts, "errors": errors, "samples": samples, "seconds": seconds}


def report(result: dict, log_text: str, training_status: dict, pages_hit: list[str], args) -> str:
    samples = result["samples"]
    start, end = samples[0][1], samples[-1][1]
    peak = max(s[1] for s in samples)
    server_errors = log_text.count("Traceback (most recent call last)")
    lines = [
        "# Soak: the app with a run training, every page and the upload, on localhost",
        "",
        f"`.venv/bin/python bench/soak.py --hits {args.hits}` on {os.cpu_count()} CPU cores "
        f"(load average at the end {os.getloadavg()[0]:.1f}; the machine is shared). "
        "Headless Chromium (Debian's) drives `streamlit run streamlit_app.py` on 127.0.0.1; "
        "each hit is a fresh navigation (a new session) to a page, or to Classify with an upload "
        "(a fundus JPEG that must be graded, with Grad-CAM, and shown as no answer since the 3-step model "
        "is no better than guessing, or a text file named .png that must be refused by name). A ResNet18 run trains in the background the whole time.",
        "",
        "| | |",
        "|---|---|",
        f"| hits | {sum(result['counts'].values())} ({result['counts']['page']} page loads over "
        f"{len(pages_hit)} pages, {result['counts']['upload']} uploads) in {result['seconds'] / 60:.1f} min |",
        f"| errors in the browser | {len(result['errors'])} |",
        f"| tracebacks in the server log | {server_errors} |",
        f"| app RSS start (after one warm-up round) | {start / 1024:.0f} MiB |",
        f"| app RSS end | {end / 1024:.0f} MiB ({(end - start) / 1024:+.0f} MiB) |",
        f"| app RSS peak | {peak / 1024:.0f} MiB |",
        f"| training run during the soak | {', '.join(sorted({s[2] for s in samples}))}; "
        f"progress at the end: epoch {training_status.get('progress', {}).get('epoch', 0):.2f} |",
        "",
        "App RSS over the soak:",
        "",
        "| hits | RSS (MiB) | training run |",
        "|---:|---:|---|",
    ]
    lines += [f"| {n} | {kib / 1024:.0f} | {state} |" for n, kib, state in samples]
    if result["errors"]:
        lines += ["", "Errors:", ""] + [f"- {e}" for e in result["errors"][:50]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hits", type=int, default=500, help="page loads and uploads in all")
    parser.add_argument("--sample-every", type=int, default=50, help="hits between RSS samples")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds a page may take to render")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "soak.md")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="retino-soak-") as tmp_name:
        tmp = Path(tmp_name)
        runs_dir = tmp / "runs"
        runs_dir.mkdir()
        os.environ["RETINO_RUNS_DIR"] = str(runs_dir)
        print("training a tiny model and starting a long run...", flush=True)
        training = prepare(runs_dir, tmp)
        with open(tmp / "streamlit.log", "wb") as log:
            server, url = start_app(runs_dir, log)
            try:
                print(f"app at {url} (pid {server.pid}); {args.hits} hits", flush=True)
                result = soak(url, server.pid, args.hits, args.sample_every, args.timeout, tmp, training)
            finally:
                stop_app(server)
                training_status = runs.read_status(training)
                launch.stop(training.name, runs_dir)
        text = report(result, (tmp / "streamlit.log").read_text(errors="replace"), training_status,
                      pages(), args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
