"""A small simulated season for the scanning tests: two nights stored and scored by the shipped
model (truth labels kept in the store, so a test can draw verdicts from the truth)."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

import numpy as np

SEASON = "Y1"
NIGHTS = (20130901, 20130902)
PER_NIGHT = 240


def build_scanned_season(base: Path, client: Any) -> dict[str, Any]:
    """``{"store", "scores", "truth"}``: the store and scores roots, and stamp_id -> label."""
    from s2v_batch.core.config import ScoreConfig
    from s2v_batch.scoring.driver import score
    from s2v_batch.sim.simulator import simulate_stamps
    from s2v_batch.store import dataset as zstore

    store, scores = base / "store", base / "scores"
    rng = np.random.default_rng(2424)
    truth: dict[int, int] = {}
    for i, night in enumerate(NIGHTS):
        batch = simulate_stamps(PER_NIGHT, rng, real_fraction=0.5)
        ids = (i + 1) * 100_000 + np.arange(PER_NIGHT, dtype=np.int64)
        zstore.write_night(
            zstore.night_path(store, SEASON, night), batch.pixels, ids, batch.labels,
            batch.masked.reshape(PER_NIGHT, -1).mean(axis=1).astype(np.float32),
            season=SEASON, night=night, attrs={"night_fingerprint": f"scan-{night}"},
        )  # fmt: skip
        truth.update(zip(ids.tolist(), batch.labels.astype(int).tolist(), strict=True))
    score(store, scores, client, config=ScoreConfig(batch_size=128, part_stamps=PER_NIGHT),
          progress=False, log=lambda _: None)  # fmt: skip
    return {"store": store, "scores": scores, "truth": truth, "season": SEASON}


class Client:
    """A keep-alive HTTP client of one server (one per thread)."""

    def __init__(self, url: str, token: str | None = None) -> None:
        u = urllib.parse.urlsplit(url)
        self.conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def call(self, method: str, path: str, body: Any = None, raw: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, Any]:  # fmt: skip
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        self.conn.request(method, path, body=data, headers={**self.headers, **(headers or {})})
        r = self.conn.getresponse()
        payload = r.read()
        kind = r.getheader("Content-Type", "")
        return r.status, json.loads(payload) if kind.startswith("application/json") else payload

    def session(self, scanner: str, order: str = "best") -> str:
        status, doc = self.call("POST", "/api/session", {"scanner": scanner, "order": order})
        assert status == 200, doc
        return doc["session"]


class ThreadServer:
    """The app of :func:`prepare` served by uvicorn in a thread on a free loopback port."""

    def __init__(self, scanning: Any, token: str | None = None) -> None:
        import uvicorn

        self.sock = socket.socket()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as serve() does
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(scanning.app(token), log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]})
        self.thread.start()
        while not self.server.started:
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join()
        self.sock.close()
