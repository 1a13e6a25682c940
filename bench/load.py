"""Many viewers: N headless Chromium sessions walk the dashboard while a run trains.

    .venv/bin/python bench/load.py [--viewers 5 20] [--browsers normal background] [--out bench/results/load.md]

The app runs as a user starts it (``streamlit run streamlit_app.py`` on 127.0.0.1) over a
temporary runs folder: the four configurations finished (written without training, with the
intervals a trainer stores), one real run that learned an easy task (Classify's model) and a
real ResNet18 run training in the background (the cpu preset on the bundled RetinaMNIST, one
thread). After one warm-up walk, for each browser priority and each N: the trainer's images/s
with no viewer for --solo-seconds, then N browser contexts (each its own Streamlit session and
websocket, in one Chromium) start over --ramp seconds and walk Overview -> Live -> Results ->
Classify (one upload) -> Compare by the sidebar links, --dwell seconds on each drawn page,
--walks times; no page is opened after --seconds, and every wait is bounded by --timeout.

A page's time runs from the click until its script has finished and its charts and images are
drawn; an upload's from the file being set until every model's answer and Grad-CAM is drawn.
An error is an exception box or a traceback on a page, a page or upload that does not finish in
time, an upload refused, a broken image, a websocket that closes or fails while its session is
open, a "Connecting" status, a page error or console error in the browser, or a traceback in the
server's log. The server's RSS and CPU time come from /proc; the trainer's speed is the images/s
it writes in its metrics.jsonl. Browsers at ``background`` priority get only the CPU that the
server and the trainer leave, as when the viewers sit at their own machines; at ``normal`` they
compete with both. Everything started here is stopped at the end, on Ctrl-C or a failure too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

from app_fixtures import write_four  # noqa: E402
from appserver import start_app, stop_app  # noqa: E402
from conftest import fundus_image, jpeg_bytes, train_easy_run  # noqa: E402
from pages_bench import CHROMIUM, CHROMIUM_ARGS, RENDERED, cpu_seconds  # noqa: E402
from soak import BROKEN, rss_kib  # noqa: E402
from retino_core.judging import comparison  # noqa: E402
from retino_core import runs  # noqa: E402

# What a viewer walks: (sidebar link, start of the page's title, charts the page draws at least).
WALK = (("Overview", "retino", 1), ("Live", "Live", 1), ("Results", "Results", 1), ("Classify", "Classify", 0),
        ("Compare", "Compare", 3))
# Loopback only: the browser resolves no name but 127.0.0.1.
BROWSER_ARGS = [*CHROMIUM_ARGS, "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]
# The page titled ``start`` is up and its script has finished (charts may still be drawing).
FINISHED = """(start) => {
  const h = document.querySelector('h1'), app = document.querySelector('[data-test-script-state]');
  return !!h && h.innerText.startsWith(start) && app?.getAttribute('data-test-script-state') === 'notRunning';
}"""
# Under every model's answer to an upload (in an expander when there is no grade to give).
GRADED = """() => (document.querySelector('[data-testid=stMain]')?.textContent || '').includes('Grad-CAM for')"""
TROUBLE = """() => {
  const out = [];
  const status = document.querySelector('[data-testid=stStatusWidget]');
  if (status && /Connecting|Unable to connect|Error/.test(status.innerText)) out.push('status: ' + status.innerText.trim());
  const text = document.body.innerText;
  for (const s of ['Connection error', 'Connection lost', 'Skipped:']) if (text.includes(s)) out.push(s);
  for (const i of document.querySelectorAll('[data-testid=stMain] img'))
    if (i.complete && i.naturalWidth === 0) out.push('broken image ' + i.src);
  return out;
}"""
# Chromium logs each failed fetch as a console error too, and Streamlit's image element echoes a
# failed image fetch ("Image source error - URL": a media file released by a rerun of the page the
# viewer is leaving); those are counted once, as fetches.
FETCH_ERRORS = ("Failed to load resource: the server responded with a status", "source error - 404",
                "Image source error - ")
UPLOAD_SIDE = 224
TRAINER_ARGS = ("--data", "retinamnist", "--arch", "resnet18", "--preset", "cpu", "--epochs", "1000",
                "--num-workers", "0")


@dataclass
class Viewer:
    """What one browser session saw."""

    number: int
    pages: list = field(default_factory=list)  # (page, seconds until its script finished, until drawn)
    uploads: list = field(default_factory=list)  # seconds
    reached: set = field(default_factory=set)
    errors: list = field(default_factory=list)
    failed_fetches: list = field(default_factory=list)  # (where, status, address path) from the app
    external: set = field(default_factory=set)  # addresses off this machine the pages asked for
    walks: int = 0
    watched: bool = False  # sat on Live through the watch window
    where: str = "start"


def local(address: str) -> bool:
    return urlsplit(address).hostname in ("127.0.0.1", "localhost")


async def drawn(page, title: str, charts: int, timeout_s: float, t0: float) -> tuple[float, float]:
    """Seconds from ``t0`` until the page titled ``title`` has finished its script, and until its
    charts and images are drawn too."""
    await page.wait_for_function(FINISHED, arg=title, polling=50, timeout=timeout_s * 1000)
    finished = time.perf_counter() - t0
    await page.wait_for_function(RENDERED, arg=charts, polling=50, timeout=timeout_s * 1000)
    return finished, time.perf_counter() - t0


async def view(browser, url: str, viewer: Viewer, upload: Path, deadline: float, walks: int = 1,
               timeout_s: float = 60.0, dwell: float = 0.0, delay: float = 0.0,
               watch: tuple[asyncio.Event, asyncio.Event] | None = None) -> Viewer:
    """One session: walk the pages (an upload on Classify) ``walks`` times, ``dwell`` seconds on
    each; no new page after ``deadline`` (time.monotonic). With ``watch`` (ready, release): then
    open Live, set ready and keep watching it until release is set."""
    from playwright.async_api import Error as PlaywrightError

    await asyncio.sleep(delay)
    context = await browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(timeout_s * 1000)
    page = await context.new_page()
    session_open = True

    def note(what: str) -> None:
        viewer.errors.append(f"viewer {viewer.number}, {viewer.where}: {what}")

    def on_socket(ws) -> None:
        ws.on("close", lambda _: session_open and note("websocket closed"))
        ws.on("socketerror", lambda err: note(f"websocket error: {err}"))

    def on_console(msg) -> None:
        if msg.type == "error" and local(msg.location.get("url") or url) and not any(
                s in msg.text for s in FETCH_ERRORS):
            note(f"console: {msg.text[:200]}")

    def on_response(response) -> None:
        if response.status >= 400 and local(response.url):
            viewer.failed_fetches.append((viewer.where, response.status, urlsplit(response.url).path))

    page.on("websocket", on_socket)
    page.on("console", on_console)
    page.on("response", on_response)
    page.on("requestfailed", lambda request: local(request.url) or viewer.external.add(request.url))
    page.on("pageerror", lambda err: note(f"page error: {str(err)[:200]}"))
    try:
        while viewer.walks < walks and time.monotonic() < deadline:
            for link, title, charts in WALK:
                if time.monotonic() >= deadline:
                    break
                viewer.where = link
                try:
                    t0 = time.perf_counter()
                    if viewer.walks == 0 and link == "Overview":
                        await page.goto(url)
                    else:
                        await page.get_by_role("link", name=link, exact=True).click()
                    viewer.pages.append((link, *await drawn(page, title, charts, timeout_s, t0)))
                    if link == "Classify":
                        viewer.where = "upload"
                        t0 = time.perf_counter()
                        await page.locator("input[type=file]").set_input_files(str(upload))
                        await page.wait_for_function(GRADED, polling=50, timeout=timeout_s * 1000)
                        await page.wait_for_function(RENDERED, arg=1, polling=50, timeout=timeout_s * 1000)
                        viewer.uploads.append(time.perf_counter() - t0)
                    await page.wait_for_timeout(dwell * 1000)  # the viewer reads the page; Live keeps polling
                    if await page.evaluate(BROKEN):
                        note("exception shown")
                    for trouble in await page.evaluate(TROUBLE):
                        note(trouble)
                    viewer.reached.add(link)
                except PlaywrightError as err:
                    note(str(err).splitlines()[0][:200])
            viewer.walks += 1
        if watch is not None:
            viewer.where = "Live, watching"
            try:
                await page.get_by_role("link", name="Live", exact=True).click()
                await drawn(page, "Live", 1, timeout_s, time.perf_counter())
                viewer.watched = True
                watch[0].set()
                await watch[1].wait()
                for trouble in await page.evaluate(TROUBLE):
                    note(trouble)
            except PlaywrightError as err:
                note(str(err).splitlines()[0][:200])
    finally:
        if watch is not None:
            watch[0].set()
        session_open = False
        await context.close()
    return viewer


# ---------------------------------------------------------------- processes and /proc


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) CPU jiffies of the whole machine so far (/proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(values) - values[3] - values[4], sum(values)


class CpuMeter:
    """Cores used since it was made: by the server, the trainer and the whole machine (/proc)."""

    def __init__(self, server_pid: int, trainer_pid: int):
        self.pids = {"server": server_pid, "trainer": trainer_pid}
        self.t0, self.machine0 = time.monotonic(), machine_jiffies()
        self.cpu0 = {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def read(self) -> dict:
        wall = time.monotonic() - self.t0
        busy, total = machine_jiffies()
        out = {name: (cpu_seconds(pid) - self.cpu0[name]) / wall for name, pid in self.pids.items()}
        out["machine"] = (busy - self.machine0[0]) / max(1, total - self.machine0[1]) * os.cpu_count()
        return out


def start_trainer(runs_dir: Path, log, extra: tuple[str, ...] = ()) -> subprocess.Popen:
    """``python -m retino_core train`` in a session of its own, one thread, as the app's queue starts one."""
    return subprocess.Popen([sys.executable, "-m", "retino_core", "train", *TRAINER_ARGS, *extra,
                             "--runs-dir", str(runs_dir), "--name", "load-training", "--quiet"],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def wait_for_steps(runs_dir: Path, trainer: subprocess.Popen, rows: int, timeout_s: float) -> Path:
    """The training run's folder once it has written ``rows`` step rows (its warm-up is over)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if trainer.poll() is not None:
            raise RuntimeError(f"the trainer exited with code {trainer.returncode}")
        found = [p for p in runs_dir.glob("*load-training*") if (p / "metrics.jsonl").exists()]
        if found and len(runs.step_rows(found[0])) >= rows:
            return found[0]
        time.sleep(0.5)
    raise RuntimeError(f"the trainer wrote no {rows} step rows in {timeout_s:.0f} s")


def images_per_s(run_dir: Path, start: float, end: float) -> tuple[float | None, int]:
    """Mean of the trainer's images/s over its step rows written between ``start`` and ``end`` (wall time)."""
    values = [r["images_per_s"] for r in runs.step_rows(run_dir) if start < r.get("time", 0) <= end]
    return (float(np.mean(values)) if values else None), len(values)


def browser_command(priority: str, folder: Path) -> str:
    """Chromium, or for ``background`` a script that starts it at background priority.

    Playwright starts Chromium in a session of its own, and with autogroup scheduling (Linux's
    default) a session shares the cores as one whatever its processes' niceness (Chromium sets
    its own anyway): so the session's autogroup goes to nice 19, and SCHED_IDLE covers kernels
    without autogroup.
    """
    if priority == "normal":
        return CHROMIUM
    script = folder / "chromium-background"
    script.write_text(f'#!/bin/sh\necho 19 > /proc/self/autogroup 2>/dev/null\nexec chrt --idle 0 {CHROMIUM} "$@"\n')
    script.chmod(0o755)
    return str(script)


async def sample_rss(pid: int, samples: list, every: float = 1.0) -> None:
    while True:
        with contextlib.suppress(OSError):
            samples.append((time.time(), rss_kib(pid)))
        await asyncio.sleep(every)


# ---------------------------------------------------------------- one load run


async def phase(browser, url: str, n: int, pids: tuple[int, int], training: Path, upload: Path,
                rss: list, args) -> dict:
    """The trainer alone for --solo-seconds, then ``n`` viewers, then --settle seconds."""
    server_pid = pids[0]
    solo_start = time.time()
    await asyncio.sleep(args.solo_seconds)
    solo = images_per_s(training, solo_start, time.time())

    rss_before, meter = rss_kib(server_pid), CpuMeter(*pids)
    start, t0 = time.time(), time.monotonic()
    viewers = [Viewer(i + 1) for i in range(n)]
    ready, release = [asyncio.Event() for _ in viewers], asyncio.Event()
    tasks = [asyncio.create_task(view(browser, url, v, upload, t0 + args.seconds, args.walks, args.timeout, args.dwell,
                                      args.ramp * i / n, (ready[i], release) if args.watch else None))
             for i, v in enumerate(viewers)]
    bound = args.seconds + 4 * args.timeout  # on top of each wait's own: a session still going is cut off
    cut = False
    try:
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in ready) if args.watch else tasks), bound)
    except asyncio.TimeoutError:
        cut = True
    walked, cpu, load = time.time(), meter.read(), os.getloadavg()[0]
    watch = None
    if args.watch and not cut:  # every viewer that could sits on Live, as while a run is watched
        meter, watch_start = CpuMeter(*pids), time.time()
        await asyncio.sleep(args.watch)
        watch = {"viewers": sum(v.watched for v in viewers), "cpu": meter.read(),
                 "trainer": images_per_s(training, watch_start, time.time())}
    release.set()
    try:
        await asyncio.wait_for(asyncio.gather(*tasks), args.timeout)
    except asyncio.TimeoutError:
        cut = True
    end = time.time()
    await asyncio.sleep(args.settle)
    return {"viewers": n, "sessions": viewers, "cut_off": cut, "seconds": walked - start, "cpu": cpu, "load": load,
            "watch": watch, "rss_before": rss_before, "rss_after": rss_kib(server_pid),
            "rss_peak": max([kib for t, kib in rss if start <= t <= end] or [rss_before]),
            "solo": solo, "with_viewers": images_per_s(training, start, walked)}


async def drive(url: str, pids: tuple[int, int], training: Path, upload: Path, args) -> dict:
    """The warm-up walk, then a phase per browser priority and N."""
    from playwright.async_api import async_playwright

    rss: list = []
    sampler = asyncio.create_task(sample_rss(pids[0], rss))
    phases, warm = [], Viewer(0)
    try:
        async with async_playwright() as p:
            for priority in args.browsers:
                browser = await p.chromium.launch(executable_path=browser_command(priority, upload.parent),
                                                  args=BROWSER_ARGS)
                if args.warm_up and not warm.walks:
                    await view(browser, url, warm, upload, time.monotonic() + args.timeout, timeout_s=args.timeout)
                    print(f"warm-up walk: {sum(t for _, _, t in warm.pages) + sum(warm.uploads):.1f} s, "
                          f"{len(warm.errors)} errors", flush=True)
                for n in args.viewers:
                    phases.append({"browsers": priority,
                                   **await phase(browser, url, n, pids, training, upload, rss, args)})
                    print(f"{n} viewers, {priority} browsers: {sum(len(v.pages) for v in phases[-1]['sessions'])} "
                          f"pages, {len(phase_errors(phases[-1]))} errors in {phases[-1]['seconds']:.0f} s", flush=True)
                await browser.close()
    finally:
        sampler.cancel()
    return {"warm_up": warm, "phases": phases}


def write_registry(runs_dir: Path, finished_run: Path | None = None) -> None:
    """The four configurations finished, with the intervals a trainer stores in summary.json,
    and one real run that learned an easy task (``finished_run`` copied, else trained here)."""
    for path in write_four(runs_dir):
        run = runs.load_run(path)
        runs.write_json(path / "summary.json", {**run.summary, **comparison.intervals(run)})
    if finished_run is not None:
        shutil.copytree(finished_run, runs_dir / finished_run.name)
    else:
        train_easy_run(runs_dir)


def run_load(args, tmp: Path, finished_run: Path | None = None) -> dict:
    """Build the runs folder, start the trainer and the app, drive the viewers; stop everything."""
    runs_dir = tmp / "runs"
    runs_dir.mkdir()
    write_registry(runs_dir, finished_run)
    upload = tmp / "eye.jpg"
    upload.write_bytes(jpeg_bytes(fundus_image(UPLOAD_SIDE, seed=3, grade=2, easy=True), quality=95))
    with contextlib.ExitStack() as stack:
        trainer_log = stack.enter_context(open(tmp / "trainer.log", "wb"))
        server_log = stack.enter_context(open(tmp / "streamlit.log", "wb"))
        trainer = start_trainer(runs_dir, trainer_log, tuple(args.trainer_args))
        stack.callback(stop_app, trainer)  # SIGTERM to its process group, SIGKILL if it lingers
        server, url = start_app(runs_dir, server_log, args.timeout,
                                [part for option in args.server_option for part in ("--" + option.split("=", 1)[0],
                                                                                   option.split("=", 1)[1])])
        stack.callback(stop_app, server)
        try:
            training = wait_for_steps(runs_dir, trainer, 2, 4 * args.timeout)
        except RuntimeError as err:
            raise RuntimeError(f"{err}: {(tmp / 'trainer.log').read_text(errors='replace')[-2000:]}") from None
        print(f"app at {url} (pid {server.pid}); trainer pid {trainer.pid} training {training.name}", flush=True)
        result = asyncio.run(drive(url, (server.pid, trainer.pid), training, upload, args))
        result["trainer_alive"] = trainer.poll() is None
    result["server_tracebacks"] = (tmp / "streamlit.log").read_text(errors="replace").count(
        "Traceback (most recent call last)")
    return result


# ---------------------------------------------------------------- the report


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def seconds(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f} s"


def phase_errors(phase: dict) -> list[str]:
    return [e for v in phase["sessions"] for e in v.errors] + (["phase cut off at its hard bound"]
                                                                if phase["cut_off"] else [])


def page_times(phase: dict, which: int = 2) -> list[float]:
    """Every page load's seconds until drawn (``which`` 1: until its script finished)."""
    return [p[which] for v in phase["sessions"] for p in v.pages]


def trainer_share(phase: dict) -> float | None:
    (solo, _), (busy, _) = phase["solo"], phase["with_viewers"]
    return busy / solo if solo and busy else None


def goals(result: dict) -> list[str]:
    """The issue's goals against what this run measured."""
    def at(n: int, browsers: str) -> dict | None:
        return next((ph for ph in result["phases"] if ph["viewers"] == n and ph["browsers"] == browsers), None)

    lines = []
    for browsers in dict.fromkeys(ph["browsers"] for ph in result["phases"]):
        if (ph := at(20, browsers)) is not None:
            errors, p95 = len(phase_errors(ph)) + result["server_tracebacks"], percentile(page_times(ph), 95)
            lines.append(f"- 0 errors at 20 viewers ({browsers} browsers): {errors} — "
                         f"{'met' if errors == 0 else 'not met'}")
            lines.append(f"- p95 page ≤ 3 s at 20 viewers ({browsers} browsers): {seconds(p95)} — "
                         f"{'met' if p95 is not None and p95 <= 3 else 'not met'}")
        if (ph := at(5, browsers)) is not None and (share := trainer_share(ph)) is not None:
            (solo, _), watched = ph["solo"], ph["watch"] and ph["watch"]["trainer"][0]
            also = f" (while they watch Live: {100 * watched / solo:.0f} %)" if watched and solo else ""
            lines.append(f"- trainer ≥ 80 % of its speed alone at 5 viewers ({browsers} browsers): {100 * share:.0f} % "
                         f"while they walk{also} — {'met' if share >= 0.8 else 'not met'}")
    growth = max(100 * (ph["rss_after"] - ph["rss_before"]) / ph["rss_before"] for ph in result["phases"])
    lines.append(f"- server RSS growth ≤ 10 % after a run of viewers: at most {growth:+.1f} % — "
                 f"{'met' if growth <= 10 else 'not met'}")
    return lines


def report(result: dict, args) -> str:
    lines = [
        "# Many viewers: browser sessions walking the dashboard while a run trains"
        + (f" (server: {', '.join(args.server_option)})" if args.server_option else ""),
        "",
        f"`.venv/bin/python bench/load.py {' '.join(args.argv)}` on {os.cpu_count()} CPU cores. Debian's Chromium "
        f"drives `streamlit run streamlit_app.py` on 127.0.0.1, on the same cores as the server and the trainer. "
        f"Each viewer is a browser context (its own session and websocket) that walks Overview → Live → Results → "
        f"Classify (one upload of a {UPLOAD_SIDE} px fundus JPEG, graded with Grad-CAM) → Compare by the sidebar "
        f"links {args.walks} time(s), {args.dwell:g} s on each page once it is drawn; the viewers start over "
        f"{args.ramp:g} s. A run trains the whole time (`python -m retino_core train "
        f"{' '.join((*TRAINER_ARGS, *args.trainer_args))}`, one thread); its images/s alone is measured for "
        f"{args.solo_seconds:g} s before each N. Browsers at *background* priority get only the "
        "CPU the server and the trainer leave (as when the viewers sit at their own machines); at *normal* they "
        f"compete with both. After its walk each viewer opens Live; once all of them sit there, the watch "
        f"window ({args.watch:g} s) measures the server and the trainer with every page polling the run. "
        f"Server RSS before each N (after one warm-up walk) and {args.settle:g} s after its viewers left. CPU in "
        "cores (1.0 = one core busy); 'rest' is the browsers, this driver and anything else on the machine. "
        "Server options: " + (", ".join(f"`{o}`" for o in args.server_option) or "the project's "
                              "`.streamlit/config.toml` only") + ".",
        "",
        "| browsers | viewers | pages | page p50 | page p95 | script finished p50 / p95 | upload → graded "
        "p50 / p95 | errors | server RSS before → after (growth) | RSS peak | CPU: server / trainer / rest | "
        "trainer images/s alone → with viewers | load average |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for ph in result["phases"]:
        pages, finished = page_times(ph), page_times(ph, 1)
        uploads = [t for v in ph["sessions"] for t in v.uploads]
        growth = 100 * (ph["rss_after"] - ph["rss_before"]) / ph["rss_before"]
        (solo, n_solo), (busy, n_busy) = ph["solo"], ph["with_viewers"]
        share = trainer_share(ph)
        cpu = ph["cpu"]
        lines.append(
            f"| {ph['browsers']} | {ph['viewers']} | {len(pages)} | {seconds(percentile(pages, 50))} | "
            f"{seconds(percentile(pages, 95))} | {seconds(percentile(finished, 50))} / "
            f"{seconds(percentile(finished, 95))} | {seconds(percentile(uploads, 50))} / "
            f"{seconds(percentile(uploads, 95))} | {len(phase_errors(ph))} | "
            f"{ph['rss_before'] / 1024:.0f} → {ph['rss_after'] / 1024:.0f} MiB ({growth:+.1f} %) | "
            f"{ph['rss_peak'] / 1024:.0f} MiB | {cpu['server']:.2f} / {cpu['trainer']:.2f} / "
            f"{cpu['machine'] - cpu['server'] - cpu['trainer']:.2f} | "
            f"{'–' if solo is None else f'{solo:.0f}'} → {'–' if busy is None else f'{busy:.0f}'}"
            f"{'' if share is None else f' ({100 * share:.0f} %)'} ({n_solo} and {n_busy} readings) | "
            f"{ph['load']:.1f} |")
    watched = [ph for ph in result["phases"] if ph["watch"]]
    if watched:
        lines += ["", f"Watch window: every viewer on Live for {args.watch:g} s.", "",
                  "| browsers | viewers watching | CPU: server / trainer / rest | trainer images/s alone → "
                  "while watched |", "|---|---:|---:|---:|"]
        for ph in watched:
            w, (solo, _) = ph["watch"], ph["solo"]
            cpu, (busy, n_busy) = w["cpu"], w["trainer"]
            lines.append(f"| {ph['browsers']} | {w['viewers']} of {ph['viewers']} | {cpu['server']:.2f} / "
                         f"{cpu['trainer']:.2f} / {cpu['machine'] - cpu['server'] - cpu['trainer']:.2f} | "
                         f"{'–' if solo is None else f'{solo:.0f}'} → {'–' if busy is None else f'{busy:.0f}'}"
                         + (f" ({100 * busy / solo:.0f} %)" if solo and busy else "") + f" ({n_busy} readings) |")
    lines += ["", "Per page: p50 / p95 / max seconds until drawn.", "",
              "| browsers | viewers | " + " | ".join(link for link, _, _ in WALK) + " | upload |",
              "|---|---:|" + "---:|" * (len(WALK) + 1)]
    for ph in result["phases"]:
        cells = [[p[2] for v in ph["sessions"] for p in v.pages if p[0] == link] for link, _, _ in WALK]
        cells.append([t for v in ph["sessions"] for t in v.uploads])
        lines.append(f"| {ph['browsers']} | {ph['viewers']} | " + " | ".join(
            "–" if not times else f"{percentile(times, 50):.2f} / {percentile(times, 95):.2f} / {max(times):.2f}"
            for times in cells) + " |")
    lines += ["", "Goals:", ""] + goals(result)
    lines += ["", f"Tracebacks in the server's log: {result['server_tracebacks']}. Warm-up walk errors: "
              f"{len(result['warm_up'].errors)}. Trainer still training at the end: "
              f"{'yes' if result['trainer_alive'] else 'no'}."]
    external = sorted({a for ph in result["phases"] for v in ph["sessions"] for a in v.external})
    if external:
        lines += ["", "Addresses off this machine the pages asked for (the browser resolves no other name; not "
                  "counted as errors): " + ", ".join(f"`{a}`" for a in external) + "."]
    for ph in result["phases"]:
        errors = phase_errors(ph)
        fetches = [f for v in ph["sessions"] for f in v.failed_fetches]
        missed = [v.number for v in ph["sessions"] if len(v.reached) < len(WALK)]
        lines.append(f"\n{ph['viewers']} viewers, {ph['browsers']} browsers: {ph['seconds']:.0f} s; "
                     + (f"viewers {missed} missed pages." if missed else "every viewer reached every page.")
                     + (f" {len(fetches)} failed fetches from the app (not errors unless a page showed a broken "
                        "image): " + ", ".join(sorted({f"{status} {path.split('/')[1]}/… on {where}"
                                                       for where, status, path in fetches})) + "." if fetches else ""))
        if errors:
            lines += ["", "Errors:", ""] + [f"- {e}" for e in errors[:40]]
    return "\n".join(lines) + "\n"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--viewers", type=int, nargs="+", default=[5, 20], help="concurrent sessions, one phase each")
    parser.add_argument("--browsers", nargs="+", choices=["normal", "background"], default=["normal", "background"],
                        help="the browsers' CPU priority, one series of phases each")
    parser.add_argument("--walks", type=int, default=1, help="walks per viewer")
    parser.add_argument("--dwell", type=float, default=2.0, help="seconds a viewer stays on a drawn page")
    parser.add_argument("--seconds", type=float, default=600.0,
                        help="bound on each phase: no viewer opens a page after it, and one still waiting is cut "
                             "off 4 x --timeout later")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds any one wait may take")
    parser.add_argument("--ramp", type=float, default=5.0, help="seconds over which the viewers start")
    parser.add_argument("--solo-seconds", type=float, default=30.0, help="the trainer alone, before each phase")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds after the viewers leave, then RSS")
    parser.add_argument("--watch", type=float, default=30.0,
                        help="seconds every viewer then keeps Live open, all at once (0: none)")
    parser.add_argument("--server-option", action="append", default=[], metavar="KEY=VALUE",
                        help="a streamlit option for the server on top of .streamlit/config.toml, "
                             "e.g. runner.postScriptGC=false")
    parser.add_argument("--no-warm-up", dest="warm_up", action="store_false", help="skip the uncounted first walk")
    parser.add_argument("--workdir", type=Path, help="build the runs folder and logs here and keep them "
                        "(default: a temporary folder, removed)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "load.md")
    parser.add_argument("--append", action="store_true", help="add the report to --out instead of replacing it")
    parser.add_argument("--trainer-args", nargs=argparse.REMAINDER, default=[],
                        help="extra arguments for the trainer (last on the line), e.g. --image-size 32")
    return parser


def interrupted(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    os.environ["OMP_NUM_THREADS"] = "1"  # the app's model and the trainer share the cores with the browsers
    signal.signal(signal.SIGTERM, interrupted)  # so the cleanup below runs on SIGTERM as on Ctrl-C
    with contextlib.ExitStack() as stack:
        if args.workdir:
            args.workdir.mkdir(parents=True)
        tmp = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="retino-load-")))
        print("writing the runs folder and training Classify's model...", flush=True)
        result = run_load(args, tmp)
    text = report(result, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a" if args.append else "w") as fh:
        fh.write(("\n" if args.append else "") + text)
    print(text)
    return 1 if result["server_tracebacks"] or any(phase_errors(ph) for ph in result["phases"]) else 0


if __name__ == "__main__":
    sys.exit(main())
