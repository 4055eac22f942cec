"""``s2v scan``: the scanning page served by uvicorn, bound to loopback unless told otherwise.

:func:`prepare` checks the inputs and opens everything (scores, store, verdict database), so a
bad argument is one line before anything listens; :func:`serve` binds the socket (port 0: any free
port), prints the URL, with a token in it for any host but loopback (as Jupyter does), and runs
until Ctrl-C (uvicorn stops cleanly on SIGINT and SIGTERM).
"""

from __future__ import annotations

import ipaddress
import secrets
import signal
import socket
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from s2v_batch.scan.app import build_app
from s2v_batch.scan.images import StampImages
from s2v_batch.scan.queue import Candidates, QueueError, load_candidates
from s2v_batch.store import dataset as zstore
from s2v_batch.store.verdicts import VerdictDB, default_db, open_verdicts

__all__ = ["Scanning", "is_loopback", "prepare", "serve"]


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class Scanning:
    """What a scanning server serves (from :func:`prepare`)."""

    candidates: Candidates
    db: VerdictDB
    images: StampImages
    db_url: str
    title: str

    def app(self, token: str | None = None) -> Any:
        """The ASGI app (requires ``token`` on every request when given)."""
        return build_app(self.candidates, self.db, self.images, token=token, title=self.title)


def prepare(
    scores: str | Path,
    store: str | Path,
    *,
    season: str | None = None,
    night: int | None = None,
    db: str | None = None,
    per_stamp: int = 1,
) -> Scanning:
    """Check the inputs and open the candidates, the store's stamps and the verdict database.

    Parameters
    ----------
    scores : path
        The Parquet scores root.
    store : path
        The Zarr store the scores were made from.
    season, night : optional
        Only this season / night.
    db : str, optional
        ``postgresql://...`` or a SQLite file; default ``SCORES/_verdicts.sqlite``.
    per_stamp : int
        Standing real/bogus verdicts wanted a stamp (independent scanners).
    """
    if not Path(store).is_dir():
        raise QueueError(f"store {store} does not exist")
    if not zstore.list_nights(store, season):
        raise QueueError(
            f"no stored nights under {store}" + (f" for season {season}" if season else "")
        )
    candidates = load_candidates(scores, season=season, night=night, per_stamp=per_stamp)
    url = str(db) if db else str(default_db(scores))
    verdicts = open_verdicts(url)
    for s in candidates.seasons():
        for sid, n in verdicts.decided(s).items():
            if (s, sid) in candidates.index:
                candidates.decided[(s, sid)] = n
    title = f"s2v scan: {Path(scores).name}" + (f" {season}" if season else "") + (
        f"/{night}" if night else "")  # fmt: skip
    return Scanning(candidates, verdicts, StampImages(store), url, title)


def serve(
    scanning: Scanning,
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    token: str | None = None,
    say: Callable[[str], None] = print,
) -> None:
    """Serve the page until interrupted (Ctrl-C, SIGTERM); prints the URL first.

    Parameters
    ----------
    scanning : Scanning
        From :func:`prepare`.
    host : str
        The address to bind; any but loopback requires a token (made here when not given).
    port : int
        0 for any free port.
    token : str, optional
        The token to require (also on loopback when given).
    say : callable
        Where the URL line goes.
    """
    # deferred: uvicorn (and its event loop) is needed only when a server runs
    import uvicorn

    if token is None and not is_loopback(host):
        token = secrets.token_urlsafe(24)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit it (Linux): without it, a keep-alive request's small response
    # waits on the client's delayed ACK (Nagle), 40 ms a request.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise QueueError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(2048)  # connections wait in the backlog from the moment the URL is printed
    real_port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{real_port}/" + (f"?token={token}" if token else "")
    say(f"scan: {len(scanning.candidates)} candidates, verdicts in {scanning.db_url}")
    config = uvicorn.Config(
        scanning.app(token), log_level="warning", access_log=False, lifespan="off"
    )
    server = uvicorn.Server(config)

    def stop(signum: int, frame: Any) -> None:
        server.should_exit = True

    # Ctrl-C (or SIGTERM) is how a scanning session ends: ours until uvicorn takes the signals
    # over, and again when it hands them back and raises what it caught.
    main = threading.current_thread() is threading.main_thread()
    old = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)} if main else {}
    try:
        say(f"scan: open {url}  (Ctrl-C stops)")
        sys.stdout.flush()
        server.run(sockets=[sock])
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        sock.close()
        scanning.db.close()
    say("scan: stopped")
