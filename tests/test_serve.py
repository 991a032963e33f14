"""papa_env/serve.py (``papa serve``): a person is the user, through the same env and session as a simulated one.

API tests drive the server over HTTP; the browser test drives the real page in headless Chromium (Debian's
``chromium``, launched by Playwright with its executable path: no browser download), with the keyboard and the mouse,
reloads it mid-round, kills the server and starts it again. ``PAPA_UPDATE_SCREENSHOTS=1`` also writes its
screenshots to ``docs/serve/`` (the README shows them).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from papa_env.agents.papa import PAPA, PRESETS, PAPAConfig
from papa_env.serve import App, image_from_data_url, png_data_url, serve


def _tiny_agent(tiny_unet) -> PAPA:
    return PAPA(tiny_unet, PAPAConfig(lr=3e-3, timesteps_per_image=2, num_sampling_steps=2, updates_per_interaction=1))


def _get(url: str) -> dict:
    with urllib.request.urlopen(url + "/api/state") as r:
        return json.loads(r.read())


def _post(url: str, payload, raw: bytes | None = None) -> tuple[int, dict]:
    body = raw if raw is not None else json.dumps(payload).encode()
    request = urllib.request.Request(url + "/api/reply", body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _wait_round(url: str, number: int, timeout: float = 120) -> dict:
    end = time.time() + timeout
    while time.time() < end:
        state = _get(url)
        if state["status"] == "judging" and state["round"] == number or state["status"] in ("done", "error"):
            return state
        time.sleep(0.05)
    raise AssertionError(f"round {number} never came: {state}")


def _start(agent, out, budget=30, port=0):
    app = App(agent, out, budget=budget)
    server = serve(app, "127.0.0.1", port)
    return app, server, f"http://127.0.0.1:{server.server_address[1]}"


def _stop(app, server) -> None:
    app.close()
    server.shutdown()
    server.server_close()


def test_images_travel_as_png_data_urls_without_loss_beyond_8_bits() -> None:
    x = torch.linspace(-1, 1, 784).view(1, 28, 28)
    assert torch.allclose(image_from_data_url(png_data_url(x)), x, atol=1 / 127.5)


def test_an_announced_round_can_be_answered_before_the_env_asks_it_and_only_once() -> None:
    import threading

    from papa_env.env import PreferenceEnv
    from papa_env.oracles.human import HumanOracle

    user = HumanOracle()
    env = PreferenceEnv(user, feedback_budget=20, queries_per_step=2)
    env.reset(seed=0)
    first = np.full((2, 1, 28, 28), -1.0, np.float32)
    env.announce(first)  # what run_session(lookahead=True) does while the agent still learns
    assert user.pending()[0] == 1
    user.submit(1, [1, -1])  # the person is quicker than the update
    assert user.pending() is None  # answered: the page shows "learning", not this round again
    with pytest.raises(ValueError, match="no round is waiting"):
        user.submit(1, [-1, -1])  # a replay changes nothing
    _, _, _, _, info = env.step(first)  # the env asks it: the answer is there already
    assert info["replies"].tolist() == [1, -1] and env.unwrapped.replies_spent == 2
    # a round asked without an announcement waits for its answer as before
    second = np.zeros((2, 1, 28, 28), np.float32)
    threading.Timer(0.2, lambda: user.submit(2, [0, 1])).start()
    assert env.step(second)[4]["replies"].tolist() == [0, 1]


def test_with_lookahead_the_next_round_shows_before_the_update_ends(tiny_unet, tmp_path) -> None:
    """The page shows round 2 while the agent still learns from round 1 (an update slowed down here)."""
    agent = _tiny_agent(tiny_unet)
    learn, learning = agent.learn, []

    def slow(queries, replies):
        learning.append(time.time())
        time.sleep(1.5)
        return learn(queries, replies)

    agent.learn = slow
    app, server, url = _start(agent, tmp_path / "run", budget=30)
    try:
        _wait_round(url, 1)
        assert _post(url, {"round": 1, "replies": [1] * 10})[0] == 200
        shown = _wait_round(url, 2)
        assert shown["round"] == 2 and time.time() < learning[0] + 1.5  # the update of round 1 is still running
        assert _post(url, {"round": 2, "replies": [-1] * 10})[0] == 200  # answered during the update
        assert _wait_round(url, 3)["replies_used"] == 20
    finally:
        _stop(app, server)
    assert len((tmp_path / "run" / "replies.jsonl").read_text().splitlines()) == 2


def test_bad_submissions_are_refused_and_change_nothing_then_a_restart_resumes(tiny_unet, tmp_path) -> None:
    out = tmp_path / "run"
    app, server, url = _start(_tiny_agent(tiny_unet), out)
    try:
        first = _wait_round(url, 1)
        assert first["k"] == 10 and len(first["images"]) == 10 and first["replies_used"] == 0
        bad = [
            ({"round": 2, "replies": [1] * 10}, 409, "round 1 is"),  # not the round waiting
            ({"round": 1, "replies": [1] * 9}, 400, "shape"),  # wrong number of replies
            ({"round": 1, "replies": [2] * 10}, 400, "must be"),  # not -1 / 0 / +1
            ({"round": 1, "replies": [True] * 10}, 400, "integers"),
            ({"round": 1, "replies": [0.5] * 10}, 400, "integers"),
            ({"round": "1", "replies": [1] * 10}, 400, "integer"),
            ({"replies": [1] * 10}, 400, "expected a JSON object"),
            ([1, 2], 400, "expected a JSON object"),
        ]
        for payload, code, match in bad:
            status, body = _post(url, payload)
            assert status == code and match in body["error"], (payload, body)
        assert _post(url, None, raw=b"{not json")[0] == 400
        assert _get(url)["round"] == 1 and not (out / "replies.jsonl").exists()  # nothing persisted, still round 1
        assert _post(url, {"round": 1, "replies": [1, -1, 0, 1, 1, -1, 1, 1, -1, 0]})[0] == 200
        status, body = _post(url, {"round": 1, "replies": [1] * 10})  # replayed
        assert status == 409
        second = _wait_round(url, 2)
        assert second["like_rates"] == [0.5] and second["replies_used"] == 10
        with urllib.request.urlopen(url + "/api/grid?which=now") as r:
            assert r.headers["Content-Type"] == "image/png" and r.read()[:4] == b"\x89PNG"
    finally:
        _stop(app, server)  # killed while round 2 waits for its answer
    lines = (out / "replies.jsonl").read_text().splitlines()
    assert [json.loads(line)["replies"] for line in lines] == [[1, -1, 0, 1, 1, -1, 1, 1, -1, 0]]
    app, server, url = _start(_tiny_agent(tiny_unet), out)
    try:
        again = _wait_round(url, 2)
        assert again["images"] == second["images"] and again["like_rates"] == [0.5]  # the same question, once
        assert _post(url, {"round": 2, "replies": [-1] * 10})[0] == 200
        assert _wait_round(url, 3)["replies_used"] == 20
    finally:
        _stop(app, server)
    assert len((out / "replies.jsonl").read_text().splitlines()) == 2


def test_the_now_grid_is_drawn_from_a_copy_without_holding_up_the_session(tiny_unet, tmp_path) -> None:
    from PIL import Image

    from papa_env.serve import _png
    from papa_env.viz import grid_array

    agent = _tiny_agent(tiny_unet)
    drawn_while_locked, draw = [], agent.generate

    def generate(n, generator):  # copied with the agent (a method of the copy then)
        drawn_while_locked.append(app.lock.locked())
        return draw(n, generator)

    agent.generate = generate
    app, server, url = _start(agent, tmp_path / "run")
    try:
        _wait_round(url, 1)
        with urllib.request.urlopen(url + "/api/grid?which=now") as r:
            png = r.read()
        assert drawn_while_locked == [False]
        with app.lock:
            images = draw(25, torch.Generator().manual_seed(12345))
        assert png == _png(Image.fromarray(grid_array(images, nrow=5, upscale=3)))  # what the agent would draw
    finally:
        _stop(app, server)


def test_a_folder_of_another_session_is_refused_before_anything_is_served(tiny_unet, tmp_path) -> None:
    import socket

    from papa_env.errors import RunMismatchError

    out = tmp_path / "run"
    app, server, url = _start(_tiny_agent(tiny_unet), out, budget=30)
    try:
        _wait_round(url, 1)
        assert _post(url, {"round": 1, "replies": [1] * 10})[0] == 200
        _wait_round(url, 2)
    finally:
        _stop(app, server)
    saved, journal = (out / "config.json").read_bytes(), (out / "replies.jsonl").read_bytes()
    with socket.socket() as probe:  # a free port, to check the refused server let it go
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(RunMismatchError, match="feedback_budget: 30 -> 40"):
        _start(_tiny_agent(tiny_unet), out, budget=40, port=port)
    with socket.socket() as again:
        again.bind(("127.0.0.1", port))  # free: the refused server closed its socket
    assert (out / "config.json").read_bytes() == saved and (out / "replies.jsonl").read_bytes() == journal


def test_a_folder_shown_to_no_one_yet_is_served_again_with_other_settings(tiny_unet, tmp_path) -> None:
    out = tmp_path / "run"
    app, server, url = _start(_tiny_agent(tiny_unet), out, budget=30)
    try:
        _wait_round(url, 1)  # shown, never answered: nothing of the person's is in the folder
    finally:
        _stop(app, server)
    with pytest.warns(UserWarning, match=r"holds no reply yet: started again.*feedback_budget: 30 -> 40"):
        app, server, url = _start(_tiny_agent(tiny_unet), out, budget=40)
        try:
            assert _wait_round(url, 1)["rounds"] == 4
        finally:
            _stop(app, server)
    assert json.loads((out / "config.json").read_text())["feedback_budget"] == 40


def test_a_bot_drives_the_api_to_the_end_of_the_budget(tiny_unet, tmp_path) -> None:
    from helpers import Bright

    from papa_env.serve import run_bot

    app, server, url = _start(_tiny_agent(tiny_unet), tmp_path / "run", budget=30)
    try:
        state = run_bot(url, Bright(threshold=-0.5))
    finally:
        _stop(app, server)
    assert state["status"] == "done" and state["replies_used"] == 30 and len(state["like_rates"]) == 3
    assert state["latency"]["rounds"] == 2 and (tmp_path / "run" / "model.safetensors").exists()


def _browser():
    playwright = pytest.importorskip("playwright.sync_api", reason="the browser test needs playwright (dev extra)")
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("no chromium on this machine (.ci/run installs Debian's)")
    args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]  # fmt: skip
    return playwright.sync_playwright(), exe, args


@pytest.mark.slow
def test_a_person_in_a_real_browser_answers_reloads_and_survives_a_server_restart(tmp_path) -> None:
    from papa_env.models import load_pretrained
    from papa_env.oracles import ClassifierOracle

    manager, exe, args = _browser()
    update = bool(os.environ.get("PAPA_UPDATE_SCREENSHOTS"))  # the README's screenshots: "after ten rounds"
    shots = Path(__file__).parents[1] / "docs" / "serve" if update else tmp_path
    shots.mkdir(parents=True, exist_ok=True)
    rounds = 10 if update else 4
    out = tmp_path / "run"

    def agent() -> PAPA:
        return PAPA(load_pretrained("mnist-ddpm"), replace(PRESETS["epapa"], seed=0))

    app, server, url = _start(agent(), out, budget=10 * rounds)
    port = server.server_address[1]
    with manager as p:
        browser = p.chromium.launch(executable_path=exe, args=args)
        page = browser.new_page(viewport={"width": 1000, "height": 1100})
        page.goto(url)
        page.wait_for_selector("#tile-9 img")
        assert f"Round 1 of {rounds}" in page.inner_text("#status")
        page.screenshot(path=str(shots / "round1.png"), full_page=True)
        before = [p.detach().clone() for p in app.agent.model().parameters()]
        # round 1 with the keyboard: like the first five, dislike the rest, undo one and redo it, Enter
        for i in range(10):
            page.keyboard.press(str((i + 1) % 10))
            page.keyboard.press("l" if i < 5 else "d")
        page.keyboard.press("u")
        assert page.get_attribute("#tile-9", "class") == "tile focus"  # the undone mark is gone
        page.keyboard.press("d")
        page.keyboard.press("Enter")
        page.wait_for_function("document.getElementById('status').textContent.includes('Round 2')", timeout=120_000)
        # round 2 with the mouse: one click = like, two = dislike, three = unsure
        for i in range(10):
            for _ in range(1 + i % 3):
                page.click(f"#tile-{i}")
        page.click("#submit")
        page.wait_for_function("document.getElementById('status').textContent.includes('Round 3')", timeout=120_000)
        lines = [json.loads(x)["replies"] for x in (out / "replies.jsonl").read_text().splitlines()]
        assert lines == [[1] * 5 + [-1] * 5, [1, -1, 0] * 3 + [1]]
        assert any(not torch.equal(a, b) for a, b in zip(before, app.agent.model().parameters()))  # it learned
        # round 3: mark three, reload the page: the marks are kept
        for i in range(3):
            page.click(f"#tile-{i}")
        page.reload()
        page.wait_for_selector("#tile-2.like")
        # kill the server mid-round and start it again on the same folder and port: the same round comes back
        images = _get(url)["images"]
        _stop(app, server)
        app, server, url = _start(agent(), out, budget=10 * rounds, port=port)
        assert _wait_round(url, 3)["images"] == images
        page.reload()
        page.wait_for_selector("#tile-2.like")
        for i in range(3, 10):
            page.keyboard.press(str((i + 1) % 10))
            page.keyboard.press(" ")
        page.keyboard.press("Enter")
        taste = ClassifierOracle("mnist", preference=(0, 6))  # the rest as a person who likes zeros and sixes would
        for number in range(4, rounds + 1):
            page.wait_for_function(f"document.getElementById('status').textContent.includes('Round {number} ')",
                                   timeout=120_000)  # fmt: skip
            shown = torch.stack([image_from_data_url(u) for u in _get(url)["images"]])
            for i, liked in enumerate(taste.likes(shown)):
                page.keyboard.press(str((i + 1) % 10))
                page.keyboard.press("l" if liked else "d")
            page.keyboard.press("Enter")
        page.wait_for_function("document.getElementById('status').textContent.startsWith('Done')", timeout=120_000)
        page.wait_for_function("document.querySelector('#grids img[alt=now]').complete", timeout=120_000)
        page.screenshot(path=str(shots / f"after{rounds}.png"), full_page=True)
        browser.close()
    _stop(app, server)
    assert len((out / "replies.jsonl").read_text().splitlines()) == rounds and (out / "model.safetensors").exists()
    assert np.isclose(json.loads((out / "replies.jsonl").read_text().splitlines()[2])["replies"].count(0), 7)
