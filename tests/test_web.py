"""The web demo (`prismaudio demo`, `prismaudio.web`): its jobs without a browser, and the real page
in a headless Chromium (Debian's `chromium` driven by playwright, never a downloaded browser).

The browser tests start the server in a subprocess on a free loopback port with an empty HOME and
working directory and a socket guard that logs any non-loopback connection, then check: the example
clip uploads and is planned, an edited CoT box reaches the generation, the result's <video> plays
a served MP4 whose audio is stereo and as long as the clip, an oversized and a non-video upload are
refused in the page, every browser request and every server connection stays on 127.0.0.1, and
the server leaves nothing behind (temp folder removed, HOME and cwd untouched).

Without chromium or playwright the browser tests skip with the reason, except in CI (CI=true),
where they fail. `PRISMAUDIO_WEB_SCREENSHOT=docs/images/demo.png` writes the README screenshot;
`PRISMAUDIO_WEB_METRICS=FILE` writes the measured timings and peak RSS as JSON.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from prismaudio.errors import PrismAudioError
from prismaudio.web import command
from prismaudio.web.jobs import MB, Workspace, check_video, cot_from_boxes, cot_from_text

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "example.mp4"
CHROMIUM = os.environ.get("PRISMAUDIO_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
EDITED = "A wooden block lands softly, then a second dull knock follows."

# Run in the server process before prismaudio.web: log every connection that is not to loopback.
GUARD = """
import runpy, socket, sys, os
_log = os.environ["PRISMAUDIO_TEST_NETLOG"]
_connect = socket.socket.connect
def connect(self, address):
    host = address[0] if isinstance(address, tuple) else str(address)
    if self.family in (socket.AF_INET, socket.AF_INET6) and host not in ("127.0.0.1", "::1", "localhost"):
        with open(_log, "a") as f:
            f.write(f"{host}\\n")
    return _connect(self, address)
socket.socket.connect = connect
sys.argv = ["prismaudio.web", *sys.argv[1:]]
runpy.run_module("prismaudio.web", run_name="__main__")
"""


# ------------------------------------------------------------------------------ no browser needed


def test_check_video_refuses_bad_uploads(tmp_path: Path) -> None:
    info = check_video(EXAMPLE, 1 * MB)
    assert info.duration == pytest.approx(4.0, abs=0.05)
    with pytest.raises(PrismAudioError, match=r"example.mp4 is 8.\d+ KB; this demo accepts videos up to 4 KB"):
        check_video(EXAMPLE, 4096)
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    with pytest.raises(PrismAudioError, match="not a video file"):
        check_video(notes, MB)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(os.urandom(3000))
    with pytest.raises(PrismAudioError, match="junk.mp4 is not a readable video") as e:
        check_video(junk, MB)
    assert str(tmp_path) not in str(e.value)  # the server's folders are not shown to the browser
    with pytest.raises(PrismAudioError, match="no video"):
        check_video(None, MB)


def test_workspace_keeps_recent_jobs_and_cleans(tmp_path: Path) -> None:
    ws = Workspace(tmp_path, keep_jobs=2)
    assert ws.root.parent == tmp_path.resolve()
    jobs = [ws.new_job() for _ in range(4)]
    assert [j.exists() for j in jobs] == [False, False, True, True]
    assert ws.contains(jobs[-1] / "x.wav") and not ws.contains(tmp_path / "elsewhere")
    ws.close()
    assert not ws.root.exists() and list(tmp_path.iterdir()) == []


def test_cot_from_the_page(tmp_path: Path) -> None:
    assert cot_from_boxes("", " ", None, "") is None  # all blank: the unconditioned text
    cot = cot_from_boxes(" a bell ", "at 1 s", "", "left")
    assert (cot.semantic, cot.temporal, cot.aesthetic, cot.spatial) == ("a bell", "at 1 s", "", "left")
    assert cot_from_text(cot.render("multi")) == cot
    secret = tmp_path / "secret.txt"
    secret.write_text("Semantic: leaked")
    parsed = cot_from_text(f"@{secret}")  # a browser's text is never read as @FILE
    assert "leaked" not in parsed.render("multi")


def test_plan_cot_errors_are_one_line() -> None:
    from prismaudio.web.jobs import plan_cot

    with pytest.raises(PrismAudioError, match="missing required parameter"):
        plan_cot(EXAMPLE, "openai")  # no base_url / model given: refused before any request
    with pytest.raises(PrismAudioError, match="KEY=VALUE"):
        plan_cot(EXAMPLE, "openai", "base_url")
    with pytest.raises(PrismAudioError, match="plans nothing"):
        plan_cot(EXAMPLE, "none")


class _StubPipe:
    """Stands in for PrismAudioPipeline.generate: a 4 s stereo tone, a warning, progress steps."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def generate(self, video, cot, seed, steps, cfg_scale, progress):
        import math
        import warnings
        from types import SimpleNamespace

        import torch

        self.calls.append(dict(video=video, cot=cot, seed=seed, steps=steps, cfg_scale=cfg_scale))
        warnings.warn("the text encoder reads 256 tokens: 12 words of the Temporal module were dropped")
        for i in range(1, steps + 1):
            progress(i, steps)
        t = torch.arange(64_000) / 16_000
        audio = 0.1 * torch.stack([torch.sin(2 * math.pi * 440 * t), torch.sin(2 * math.pi * 660 * t)])
        return SimpleNamespace(audio=audio, sample_rate=16_000, duration=4.0)


def test_generator_job_writes_its_files_in_the_workspace(tmp_path: Path) -> None:
    import av

    from prismaudio.web.jobs import Generator

    ws, pipe = Workspace(tmp_path), _StubPipe()
    seen: list[tuple[float, str]] = []
    cot = cot_from_boxes("a bell", "at 1 s", "", "left")
    res = Generator(pipe, ws).run(EXAMPLE, cot, steps=3, cfg=4.5, seed=7, progress=lambda f, d: seen.append((f, d)))
    assert pipe.calls == [dict(video=EXAMPLE, cot=cot.render("multi"), seed=7, steps=3, cfg_scale=4.5)]
    assert all(ws.contains(p) for p in (res.wav, res.mp4, res.png, res.cot_json))
    assert [Path(p).name for p in res.downloads] == ["example.wav", "example.mp4", "example.cot.json"]
    assert json.loads(res.cot_json.read_text()) == cot.to_dict()
    assert res.notes == ("the text encoder reads 256 tokens: 12 words of the Temporal module were dropped",)
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0
    assert "sampling step 3/3" in [d for _, d in seen]
    with av.open(str(res.mp4)) as c:
        assert c.streams.audio[0].codec_context.channels == 2 and c.streams.video
    empty = Generator(pipe, ws).run(EXAMPLE, None, steps=1, cfg=5, seed=0)  # all boxes blank
    assert pipe.calls[-1]["cot"] == "" and empty.cot_json is None
    with pytest.raises(PrismAudioError, match="steps must be a positive integer"):
        Generator(pipe, ws).run(EXAMPLE, cot, steps=0, cfg=5, seed=0)
    ws.close()


def test_demo_parser_defaults_and_checks() -> None:
    parser = argparse.ArgumentParser()
    command.add_parser(parser.add_subparsers())
    args = parser.parse_args(["demo"])
    assert (args.host, args.port, args.planner, args.model) == ("127.0.0.1", 7860, "offline", None)
    assert args.func is command.run
    for bad in (["--port", "0"], ["--max-upload-mb", "0"], ["--keep-jobs", "0"], ["--example", "/nonexistent.mp4"]):
        with pytest.raises(PrismAudioError):
            command.run(parser.parse_args(["demo", *bad]))
    with socket.socket() as taken:  # a busy port is refused before the model loads
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(PrismAudioError, match="cannot serve on 127.0.0.1"):
            command.run(parser.parse_args(["demo", "--port", str(taken.getsockname()[1])]))


# ------------------------------------------------------------------------------ the real page


def _browser_or_skip() -> None:
    problems = []
    if not Path(CHROMIUM).is_file():
        problems.append(f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium)")
    for module in ("playwright", "gradio"):  # found, not imported: the server imports gradio itself
        if importlib.util.find_spec(module) is None:
            problems.append(f"{module} is not installed (pip install -e '.[dev]')")
    if problems:
        reason = "web demo browser test: " + "; ".join(problems)
        if IN_CI:
            pytest.fail(reason + " -- CI must run it (.ci/run installs chromium)")
        pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory):
    """The demo server in a subprocess and a headless Chromium (launched while the server starts):
    a dict with url, browser, tmp, metrics. On teardown the server is stopped with SIGTERM and
    checked to have left nothing behind."""
    _browser_or_skip()
    from playwright.sync_api import sync_playwright

    base = tmp_path_factory.mktemp("web")
    dirs = {k: base / k for k in ("home", "cwd", "tmp", "systmp")}
    for d in dirs.values():
        d.mkdir()
    netlog = base / "netlog.txt"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GRADIO_", "XDG_", "MPLCONFIGDIR"))}
    env.update(HOME=str(dirs["home"]), TMPDIR=str(dirs["systmp"]), PRISMAUDIO_TEST_NETLOG=str(netlog),
               PYTHONUNBUFFERED="1")
    port = _free_port()
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", GUARD, "--port", str(port), "--max-upload-mb", "1", "--tmpdir", str(dirs["tmp"]),
         "--example", str(EXAMPLE)],
        cwd=dirs["cwd"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    info: dict = {"tmp": dirs["tmp"], "metrics": {}}
    try:
        with sync_playwright() as p:
            info["browser"] = p.chromium.launch(executable_path=CHROMIUM, args=[
                "--no-sandbox", "--disable-background-networking", "--disable-component-update", "--no-first-run",
                "--disable-sync", "--disable-default-apps", "--autoplay-policy=no-user-gesture-required"])
            url = None
            deadline = time.monotonic() + 120
            while url is None and time.monotonic() < deadline and proc.poll() is None:
                line = proc.stdout.readline()
                if "serving on" in line:
                    url = line.split("serving on", 1)[1].split()[0]
            if url is None:
                proc.kill()
                pytest.fail(f"the demo server did not start: {proc.communicate(timeout=10)[1][-3000:]}")
            info["url"] = url
            info["metrics"]["server_startup_s"] = round(time.perf_counter() - t0, 2)
            assert url.startswith(f"http://127.0.0.1:{port}")
            assert len(list(dirs["tmp"].iterdir())) == 1  # the server's own temporary folder, inside --tmpdir
            yield info
            info["metrics"]["server_peak_rss_mb"] = round(_peak_rss_mb(proc.pid), 1)
            info["browser"].close()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, proc.stderr.read()[-3000:]
    # nothing left behind, nothing written outside its own folder, no connection off the machine
    assert list(dirs["tmp"].iterdir()) == []
    for d in ("cwd", "home", "systmp"):
        assert list(dirs[d].rglob("*")) == [], f"the server wrote into its {d}"
    assert not netlog.exists(), f"the server connected off the machine: {netlog.read_text()}"
    _write_metrics(info["metrics"])


def _write_metrics(m: dict) -> None:
    print(f"\nweb demo measurements: {json.dumps(m)}")
    if os.environ.get("PRISMAUDIO_WEB_METRICS"):
        Path(os.environ["PRISMAUDIO_WEB_METRICS"]).write_text(json.dumps(m, indent=1) + "\n")


@pytest.fixture(scope="module")
def page(demo):
    """One page on the demo for the module's browser tests (a user's session), recording every request
    it makes; each test brings the page to the state it needs."""
    url = demo["url"]
    context = demo["browser"].new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    requests: list[str] = []
    pg.on("request", lambda r: requests.append(r.url))
    t0 = time.perf_counter()
    pg.goto(url)
    pg.wait_for_selector("#generate-btn", state="visible")
    demo["metrics"].setdefault("page_load_s", round(time.perf_counter() - t0, 2))
    yield pg
    context.close()
    offsite = [r for r in requests if not r.startswith(("data:", "blob:")) and not r.startswith(url.rstrip("/"))]
    assert requests and not offsite, f"requests that left the loopback server: {offsite[:10]}"


def _box(page, module: str):
    return page.locator(f"#cot-{module} textarea")


def test_browser_upload_edit_generate_play(demo, page, tmp_path: Path) -> None:
    import av

    url, info = demo["url"], demo
    page.set_input_files("#video-in input[type=file]", str(EXAMPLE))
    page.wait_for_function("document.querySelector('#cot-semantic textarea').value.length > 0", timeout=60_000)
    assert "CoT planned by 'offline'" in page.inner_text("#status")
    assert _box(page, "temporal").input_value()  # all four modules filled by the planner
    _box(page, "semantic").fill(EDITED)

    t0 = time.perf_counter()
    page.click("#generate-btn")
    page.get_by_text("sampling step").first.wait_for(timeout=60_000)  # the progress bar
    page.wait_for_function("() => { const v = document.querySelector('#video-out video');"
                           " return v && v.currentSrc && v.readyState >= 3; }", timeout=120_000)
    info["metrics"]["click_to_playable_s"] = round(time.perf_counter() - t0, 2)
    status = page.inner_text("#status")
    assert "generated 4.00 s of stereo sound" in status
    info["metrics"]["server_job_s"] = float(re.search(r"sound in ([\d.]+) s", status).group(1))

    start = page.evaluate("() => { const v = document.querySelector('#video-out video'); v.muted = true;"
                          " v.play(); return v.currentTime; }")
    page.wait_for_function(f"document.querySelector('#video-out video').currentTime > {start} + 0.3", timeout=20_000)
    assert page.evaluate("document.querySelector('#video-out video').duration") == pytest.approx(4.0, abs=0.1)

    src = page.evaluate("document.querySelector('#video-out video').currentSrc")
    assert src.startswith(url.rstrip("/"))
    served = tmp_path / "served.mp4"
    served.write_bytes(urllib.request.urlopen(src, timeout=30).read())
    with av.open(str(served)) as c:
        audio = c.streams.audio[0]
        assert audio.codec_context.channels == 2
        assert float(audio.duration * audio.time_base) == pytest.approx(4.0, abs=0.05)
        assert c.streams.video  # the clip itself, with its new soundtrack

    links = {a.split("/")[-1]: a for a in page.eval_on_selector_all("#downloads a", "els => els.map(e => e.href)")}
    assert {"example.wav", "example.mp4", "example.cot.json"} <= set(links), links
    cot = json.loads(urllib.request.urlopen(links["example.cot.json"], timeout=30).read())
    assert cot["semantic"] == EDITED  # the edited box is what the sound was conditioned on
    assert page.locator("#spec-out img").count() == 1

    shot = Path(os.environ.get("PRISMAUDIO_WEB_SCREENSHOT") or tmp_path / "demo.png")
    shot.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000


def test_browser_compare_seeds_and_cots(demo, page) -> None:
    if not _box(page, "semantic").input_value():  # run alone: start from the example
        page.click("#example-btn")
        page.wait_for_function("document.querySelector('#cot-semantic textarea').value.length > 0", timeout=60_000)
    page.locator("#steps input[type=number]").fill("4")
    page.locator("#steps input[type=number]").press("Enter")
    page.get_by_role("tab", name="Compare").click()
    page.click("#compare-btn")
    page.wait_for_function("() => ['#video-a', '#video-b'].every(s => { const v = document.querySelector(s + ' video');"
                           " return v && v.currentSrc; })", timeout=120_000)
    srcs = page.eval_on_selector_all("#video-a video, #video-b video", "els => els.map(e => e.currentSrc)")
    a, b = (urllib.request.urlopen(s, timeout=30).read() for s in srcs)
    assert a != b  # two seeds, two soundtracks
    assert "A and B generated in" in page.inner_text("#status") and "(two seeds)" in page.inner_text("#status")

    page.locator("#compare-mode").get_by_text("two CoTs").click()
    page.click("#copy-btn")
    page.wait_for_function("document.querySelector('#cot-b textarea').value.startsWith('Semantic: ')")
    cot_b = page.locator("#cot-b textarea")
    cot_b.fill(cot_b.input_value().replace("Spatial: ", "Spatial: Very close, on the right. ", 1))
    page.click("#compare-btn")
    page.wait_for_function("document.querySelector('#status').innerText.includes('(two CoTs)')", timeout=120_000)
    srcs_2 = page.eval_on_selector_all("#video-a video, #video-b video", "els => els.map(e => e.currentSrc)")
    # gradio serves files by content hash: A (seed 0, the boxes) is bit-identical to the first A, B is new
    assert srcs_2[0] == srcs[0] and srcs_2[1] not in srcs


def _clear_video(page) -> None:
    """Empty the video input (its file field only exists while it is empty)."""
    if page.locator("#video-in video").count():
        page.locator("#video-in button[aria-label='Clear']").click()
    page.wait_for_selector("#video-in input[type=file]", state="attached")


def test_browser_refuses_oversized_and_non_video(demo, page, tmp_path: Path) -> None:
    _clear_video(page)
    big = tmp_path / "big.mp4"
    big.write_bytes(os.urandom(int(1.5 * MB)))  # the server runs with --max-upload-mb 1
    page.set_input_files("#video-in input[type=file]", str(big))
    page.get_by_text("exceed the maximum allowed size").wait_for(timeout=20_000)
    assert not list(demo["tmp"].rglob("big.mp4"))  # never stored
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(os.urandom(3000))
    _clear_video(page)
    page.set_input_files("#video-in input[type=file]", str(junk))
    page.wait_for_function("document.querySelector('#status').innerText.includes('junk.mp4')", timeout=20_000)
    assert "junk.mp4 is not a readable video" in page.inner_text("#status")
    page.wait_for_function("!document.querySelector('#video-in video')", timeout=20_000)  # not kept
    notes = tmp_path / "notes.txt"
    notes.write_text("not a video")
    _clear_video(page)
    page.set_input_files("#video-in input[type=file]", str(notes))
    page.get_by_text("Invalid file type").wait_for(timeout=20_000)
