"""``papa serve``: a local web page where a person is the user of a live preference-alignment session.

    papa serve                                   # EPAPA on the shipped MNIST model; open the printed URL
    papa serve --no-filter                       # its samples from the weights alone (default: its reward filter)
    papa serve --bot classifier --preference "[1, 4]"   # a simulated user drives the same page's API (tests, demos)

The session is the ordinary one: :func:`papa_env.session.run_session` with a :class:`~papa_env.env.PreferenceEnv`
whose user is a :class:`~papa_env.oracles.human.HumanOracle`, run in a background thread. Each round the page shows
the agent's K queries; the person marks each like / dislike / unsure (click cycles; keys 1-9, 0 pick an image, L / D /
space mark it, U undoes, Enter submits) and submits; the reply is persisted in the run folder before the agent learns
from it. With lookahead (the default) the next round is sampled while the person judges this one and shown as soon as
the reply is persisted, while the agent learns from it (its images come from the model one update behind);
``--no-lookahead`` samples and shows it after the update. An answer given before that update and the next draw end
is journalled when they end (a kill in between asks that round again).
Closing the tab, reloading (marks are kept in the browser) or killing the server and starting it again resumes where
the session stopped: nothing lost, nothing asked twice.

Built on the standard library's ``http.server`` (one local user, four JSON endpoints and a page of plain HTML and a
little JavaScript: no framework, no CDN, nothing fetched at run time). Bound to 127.0.0.1 unless ``--host`` says
otherwise.

    GET  /                  the page
    GET  /api/state         {status, round, rounds, k, budget, replies_used, images (PNG data URLs), like_rates,
                             latency (seconds from a submission to the next round: last, p50, p95), message}
    POST /api/reply         {"round": n, "replies": [+1 / -1 / 0, ...]} -> 200, or 400 / 409 with {"error": ...}
    GET  /api/grid?which=before|now   a PNG grid of 25 samples: the base model's, or the agent's now
"""

from __future__ import annotations

import base64
import copy
import io
import json
import os
import threading
import time
import urllib.parse
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import torch


def png_data_url(image: torch.Tensor) -> str:
    """(1, H, W) in [-1, 1] -> a grey-level PNG as a data URL (the page scales it up, pixelated)."""
    from PIL import Image

    grey = ((image[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    buf = io.BytesIO()
    Image.fromarray(grey).save(buf, format="PNG")  # uint8 (H, W): a grey-level image
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def image_from_data_url(url: str) -> torch.Tensor:
    """The inverse of :func:`png_data_url`: (1, H, W) float32 in [-1, 1] (8-bit levels)."""
    from PIL import Image

    data = base64.b64decode(url.split(",", 1)[1])
    grey = np.asarray(Image.open(io.BytesIO(data)).convert("L"), np.float32)
    return torch.from_numpy(grey / 127.5 - 1.0)[None]


class _Locked:
    """The agent, with ``propose`` / ``learn`` / ``generate`` under one lock (the page's grid reads the weights
    from another thread while the session learns)."""

    def __init__(self, agent: Any, lock: threading.Lock) -> None:
        self._agent, self._lock = agent, lock
        self.name = agent.name

    def __getattr__(self, name: str) -> Any:
        return getattr(self._agent, name)

    def propose(self, generator):
        with self._lock:
            return self._agent.propose(generator)

    def learn(self, queries, replies):
        with self._lock:
            return self._agent.learn(queries, replies)

    def generate(self, n, generator):
        with self._lock:
            return self._agent.generate(n, generator)

    def snapshot(self) -> Any:
        """A copy of the agent as it is between two updates: the page draws from it without holding up the session
        (the reward filter makes a grid of 25 cost seconds)."""
        with self._lock:
            return copy.deepcopy(self._agent)

    def state_dict(self):
        return self._agent.state_dict()

    def load_state_dict(self, state):
        self._agent.load_state_dict(state)


class App:
    """One served session: the agent, the env with a person as its user, the run folder, the session thread.

    Args:
        agent: any agent of :func:`papa_env.session.run_session` (like / dislike replies).
        out: the run folder (an existing session there is resumed).
        budget, queries_per_step: the session's feedback budget and K.
        dataset: which base model the agent tunes ("mnist" or "fashion-mnist"; the env's ``base_model``).
        lookahead: show the next round as soon as it is sampled, while the agent learns from this one (the next
            round's images come from the model one update behind: ``run_session(..., lookahead=True)``).
    """

    def __init__(self, agent: Any, out: str | Path, budget: int = 300, queries_per_step: int = 10,
                 dataset: str = "mnist", seed: int = 0, lookahead: bool = True) -> None:  # fmt: skip
        from papa_env.env import PreferenceEnv
        from papa_env.oracles.human import HumanOracle

        self.lock = threading.Lock()
        self.agent = _Locked(agent, self.lock)
        self.out, self.seed, self.lookahead = Path(out), seed, lookahead
        self.user = HumanOracle(round_of=lambda: self.env.replies_spent // self.env.queries_per_step + 1)
        self.env = PreferenceEnv(self.user, dataset=dataset, feedback_budget=budget, queries_per_step=queries_per_step)
        self.rounds = budget // queries_per_step
        self.status, self.message = "starting", ""
        self.like_rates: list[float] = []
        self.latencies: list[float] = []
        self._submitted_at: float | None = None
        self._thread: threading.Thread | None = None
        self.error: Exception | None = None  # what ended the session thread, if anything did
        self._before: bytes | None = None

    # ------------------------------------------------------------------------------------------ session
    def start(self) -> None:
        """Refuse a folder this session cannot resume (:class:`~papa_env.errors.RunMismatchError`, before anything
        runs), read the folder's earlier rounds, then run (or resume) the session in a background thread."""
        from papa_env.runfolder import RunFolder
        from papa_env.session import check_run_folder

        check_run_folder(self.agent, self.env, self.out, eval_every=0, seed=self.seed, lookahead=self.lookahead)
        if (self.out / "replies.jsonl").exists():
            self.like_rates = [
                float(np.mean(np.asarray(line["replies"]) == 1)) for line in RunFolder(self.out).journal()
            ]
        self._thread = threading.Thread(target=self._run, name="papa-session", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from papa_env.oracles.human import SessionClosed
        from papa_env.session import run_session

        try:
            run_session(
                self.agent, self.env, self.out, eval_every=0, seed=self.seed, progress=False, lookahead=self.lookahead
            )
            self.status = "done"
        except SessionClosed:
            self.status = "closed"
        except Exception as err:  # noqa: BLE001 (shown on the page, raised again by main; the folder stays resumable)
            self.error = err
            self.status, self.message = "error", f"{type(err).__name__}: {err}"

    def close(self) -> None:
        self.user.close()
        if self._thread is not None:
            self._thread.join(timeout=30)

    # -------------------------------------------------------------------------------------------- state
    def state(self) -> dict[str, Any]:
        pending = self.user.pending()
        status = self.status
        if pending is not None:
            status = "judging"
            if self._submitted_at is not None:
                self.latencies.append(time.perf_counter() - self._submitted_at)
                self._submitted_at = None
        elif status == "starting" and self._submitted_at is not None:
            status = "learning"
        lat = np.array(self.latencies) if self.latencies else None
        return {
            "status": status,
            "round": pending[0] if pending else None,
            "rounds": self.rounds,
            "k": self.env.queries_per_step,
            "budget": self.env.feedback_budget,
            "replies_used": self.env.replies_spent,
            "images": [png_data_url(x) for x in pending[1]] if pending else [],
            "like_rates": self.like_rates,
            "latency": None
            if lat is None
            else {
                "last": float(lat[-1]),
                "p50": float(np.percentile(lat, 50)),
                "p95": float(np.percentile(lat, 95)),
                "rounds": len(lat),
            },  # fmt: skip
            "message": self.message,
        }

    def submit(self, payload: Any) -> dict[str, Any]:
        """Validate and hand over one round's replies; ValueError with what is wrong (nothing changes)."""
        if not isinstance(payload, dict) or set(payload) != {"round", "replies"}:
            raise ValueError('expected a JSON object {"round": n, "replies": [+1 / -1 / 0 per image]}')
        number, replies = payload["round"], payload["replies"]
        if isinstance(number, bool) or not isinstance(number, int) or not isinstance(replies, list):
            raise ValueError('"round" must be an integer and "replies" a list')
        answer = self.user.submit(number, replies)
        self._submitted_at = time.perf_counter()
        self.status = "starting"  # until the next round is pending: learning
        self.like_rates.append(float(np.mean(answer == 1)))
        return {"status": "learning", "round": number}

    def grid(self, which: str) -> bytes:
        """A PNG of 25 samples: the base model's (before) or the agent's current ones (now)."""
        from PIL import Image

        from papa_env.viz import grid_array

        generator = torch.Generator().manual_seed(12345)
        if which == "before":
            if self._before is None:
                from papa_env.diffusion import sample
                from papa_env.models import load_pretrained

                images = sample(load_pretrained(self.env.base_model), 25, generator=generator)
                self._before = _png(Image.fromarray(grid_array(images, nrow=5, upscale=3)))
            return self._before
        if which == "now":
            images = self.agent.snapshot().generate(25, generator)
            return _png(Image.fromarray(grid_array(images, nrow=5, upscale=3)))
        raise ValueError(f"which must be 'before' or 'now', got {which!r}")


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def make_handler(app: App) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "papa-serve"

        def log_message(self, format: str, *args: Any) -> None:  # quiet: the page polls
            pass

        def _send(self, code: int, body: bytes, kind: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, code: int, value: Any) -> None:
            self._send(code, json.dumps(value).encode(), "application/json")

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            url = urllib.parse.urlparse(self.path)
            if url.path == "/":
                self._send(200, INDEX_HTML.encode(), "text/html; charset=utf-8")
            elif url.path == "/api/state":
                self._json(200, app.state())
            elif url.path == "/api/grid":
                which = urllib.parse.parse_qs(url.query).get("which", ["now"])[0]
                try:
                    self._send(200, app.grid(which), "image/png")
                except ValueError as err:
                    self._json(400, {"error": str(err)})
            else:
                self._json(404, {"error": f"no such page: {url.path}"})

        def do_POST(self) -> None:  # noqa: N802
            if urllib.parse.urlparse(self.path).path != "/api/reply":
                self._json(404, {"error": f"no such endpoint: {self.path}"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            if length > 100_000:
                self._json(413, {"error": "request too large"})
                return
            try:
                payload = json.loads(self.rfile.read(length) or b"null")
            except json.JSONDecodeError as err:
                self._json(400, {"error": f"not JSON: {err}"})
                return
            try:
                self._json(200, app.submit(payload))
            except ValueError as err:
                stale = "not the one waiting" in str(err) or "no round is waiting" in str(err)
                self._json(409 if stale else 400, {"error": str(err)})

    return Handler


def serve(app: App, host: str = "127.0.0.1", port: int = 8765) -> ThreadingHTTPServer:
    """Start ``app``'s session and an HTTP server for it (in a background thread); returns the server. A run folder
    the session cannot resume is refused before the server takes a request."""
    server = ThreadingHTTPServer((host, port), make_handler(app))
    server.daemon_threads = True
    try:
        app.start()
    except BaseException:
        server.server_close()
        raise
    threading.Thread(target=server.serve_forever, name="papa-http", daemon=True).start()
    return server


def run_bot(
    url: str, user: Any, stop: threading.Event | None = None, poll: float = 0.05, think: float = 0.0
) -> dict[str, Any]:
    """A simulated user that answers through the page's API, as a person's browser does: reads each round's PNG
    images, replies with ``user.reply`` after ``think`` seconds (a person judging), until the session is done;
    returns the server's last state."""
    import urllib.request

    rng = np.random.default_rng(0)
    answered = None
    while stop is None or not stop.is_set():
        with urllib.request.urlopen(url + "/api/state") as r:
            state = json.loads(r.read())
        if state["status"] in ("done", "error", "closed"):
            return state
        if state["status"] == "judging" and state["round"] != answered:
            images = torch.stack([image_from_data_url(u) for u in state["images"]])
            replies = [int(r) for r in user.reply(images, rng)]
            time.sleep(think)
            body = json.dumps({"round": state["round"], "replies": replies}).encode()
            request = urllib.request.Request(url + "/api/reply", body, {"Content-Type": "application/json"})
            with urllib.request.urlopen(request) as r:
                r.read()
            answered = state["round"]
        time.sleep(poll)
    return state


INDEX_HTML = (Path(__file__).parent / "web" / "index.html").read_text()
"""The page: plain HTML, CSS and JavaScript, nothing loaded from elsewhere."""
# what a person gets from the agent (the "now" grid, `papa sample` of the run) passes its reward filter unless
# --no-filter: its gate optimistic (what the replies have not yet shown disliked passes), its strata's shares the base
# model's own mass in each (from 4 x n free base draws, which also fill a stratum the tuned model no longer draws) times
# the stratum's like-rate. On the suite's tuning half against the weights alone / the gate alone: like@100 0.713 /
# 0.873 / 0.867, balance 0.585 / 0.618 / 0.706, flagged sessions 13 / 14 / 10 (docs/experiments/suite-defaults.md,
# "the strata's shares ... in session"); twice the gate's draws (25 images: 5.4 s against 2.9 s on 2 threads). The
# queries, what the person is asked, are the preset's
SERVE_FILTER = {"generate_candidates": 4, "generate_strata": 10, "generate_strata_prior": 2.0, "generate_optimism": 1.0,
                "generate_base_candidates": 4, "generate_strata_mass": True}  # fmt: skip
SHAPE = ("generate_candidates", "generate_strata")  # either given: the flags alone decide the filter


def started_filter(out: str | os.PathLike) -> dict[str, Any]:
    """The filter ``papa serve`` gives a folder: :data:`SERVE_FILTER`, or for one a person has replied in, the filter it
    was started with (a field its config.json lacks, written before the field existed: the field's default), so the
    same command resumes a session started by an earlier version."""
    from papa_env.agents.papa import PAPAConfig
    from papa_env.runfolder import CONFIG, RunFolder

    if not (Path(out) / CONFIG).is_file() or not (folder := RunFolder(out)).replied():
        return dict(SERVE_FILTER)
    saved = folder.saved_config().get("agent_config") or {}  # not JSON: RunCorruptedError, nothing touched
    fields = PAPAConfig.__dataclass_fields__
    return {k: saved.get(k, fields[k].default) for k in SERVE_FILTER}


def main(ns: Any) -> dict[str, Any] | None:
    """``papa serve``: build the agent and the app, serve until Ctrl-C (or, with ``--bot``, until the bot is done)."""
    import signal

    from papa_env.agents.papa import PAPA, PRESETS, PAPAConfig
    from papa_env.cli import load_unet, parse_into, parse_preference
    from papa_env.models import model_metadata, pretrained_path

    path = pretrained_path(ns.model) if ns.model.endswith("-ddpm") else Path(ns.model)
    dataset = model_metadata(path).get("dataset", "mnist")
    from papa_env.cli import resolve_device

    filtered = ns.filter and not set(SHAPE) & set(vars(ns))  # the gate's fields given: over the filter
    start = replace(PRESETS[ns.preset], **started_filter(ns.out)) if filtered else PRESETS[ns.preset]
    config = parse_into(PAPAConfig, ns, start)  # with the fields given as flags over it
    agent = PAPA(load_unet(ns.model).to(resolve_device(ns.device)), config)
    bot, state = None, None
    if ns.bot:  # built (and its taste checked) before anything is served
        from papa_env.env import PreferenceEnv

        kwargs = {"preference": parse_preference(ns.preference)} if ns.preference else {}
        bot = PreferenceEnv(ns.bot, dataset=dataset, **kwargs).oracle  # built as gym.make would build it
    app = App(agent, ns.out, budget=ns.budget, dataset=dataset, seed=ns.seed, lookahead=ns.lookahead)
    server = serve(app, ns.host, ns.port)  # a folder this session cannot resume is refused here
    url = f"http://{ns.host}:{server.server_address[1]}"
    preset = agent.name if ns.preset == agent.name else f"{agent.name} ({ns.preset})"
    given = [f for f in vars(ns) if f in PAPAConfig.__dataclass_fields__ and f != "seed"]
    changed = [f"{f}={getattr(config, f)!r}" for f in dict.fromkeys([*SERVE_FILTER, *given] if filtered else given)]
    preset += f" with {', '.join(changed)}" if changed else ""
    print(f"papa serve: {preset} on {ns.model}, {ns.budget} replies, run folder {ns.out}")
    print(f"open {url} in a browser (Ctrl-C stops; the same command resumes)", flush=True)
    try:
        if bot is not None:
            state = run_bot(url, bot)
            print(f"bot done: {state['status']} after {state['replies_used']} replies; latency {state['latency']}")
        else:
            signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
            while app.status not in ("done", "error"):
                time.sleep(0.5)
            print(f"session {app.status}")
    except KeyboardInterrupt:
        print("\nstopped; run the same command to resume")
        return None
    finally:
        app.close()
        server.shutdown()
    if app.error is not None:  # the CLI reports it (one line and exit code 2 for a user's error)
        raise app.error
    return state
