"""The scanning page (`s2v scan`) on loopback: its API and its 4xx answers, the token, scanners at
once (nothing lost, nothing twice), a server killed with SIGKILL mid-run, and the page driven by
keys in Debian's Chromium through Playwright (a screenshot lands in docs/scan.png)."""

from __future__ import annotations

import http.client
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import skip_or_fail
from scan_data import Client, ThreadServer

from s2v_batch.scan.server import is_loopback, prepare
from s2v_batch.store.verdicts import open_verdicts

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def served(scanned_season, tmp_path_factory) -> Iterator[dict[str, Any]]:
    """One server for the module (8 verdicts a stamp wanted, so 8 scanners share every stamp)."""
    db = tmp_path_factory.mktemp("scan-db") / "verdicts.sqlite"
    scanning = prepare(scanned_season["scores"], scanned_season["store"], db=str(db), per_stamp=8)
    srv = ThreadServer(scanning)
    yield {"url": srv.url, "db": db, "n": len(scanning.candidates), "scanning": scanning,
           **scanned_season}  # fmt: skip
    srv.stop()


def test_api_answers_bad_requests_with_one_line_json_and_writes_nothing(served) -> None:
    c = Client(served["url"])
    sid = c.session("checker")
    status, doc = c.call("GET", f"/api/next?session={sid}&n=2")
    assert status == 200 and len(doc["items"]) == 2
    item = doc["items"][0]
    ok = {"session": sid, "season": "Y1", "stamp_id": item["stamp_id"], "verdict": "real",
          "seconds": 1.25}  # fmt: skip
    bad = [
        (dict(ok, stamp_id=999_999_999), 404, "not a candidate"),
        (dict(ok, verdict="maybe"), 422, "verdict must be one of real, bogus, skip"),
        (dict(ok, session="no-such-session"), 404, "unknown session"),
        (dict(ok, seconds=-1), 422, "seconds must be"),
        (dict(ok, seconds="1"), 422, "seconds must be"),
        (dict(ok, stamp_id="1"), 422, "stamp_id must be an integer"),
    ]
    for body, want, words in bad:
        status, doc = c.call("POST", "/api/verdict", body)
        assert status == want and words in doc["error"] and "\n" not in doc["error"], (body, doc)
    for raw, want, words in [
        (b"{not json", 400, "must be JSON"),
        (b"[1, 2]", 400, "JSON object"),
        (b'{"a": "' + b"x" * 20_000 + b'"}', 413, "request body over"),
    ]:
        status, doc = c.call("POST", "/api/verdict", raw=raw)
        assert status == want and words in doc["error"], doc
    status, doc = c.call("POST", "/api/session", {"scanner": "x" * 65})
    assert status == 422 and "scanner" in doc["error"]
    status, doc = c.call("POST", "/api/session", {"scanner": "x", "order": "disagree"})
    assert status == 400 and "not available" in doc["error"]  # DES scores: no survey score
    status, doc = c.call("GET", f"/api/next?session={sid}&n=500")
    assert status == 422
    status, doc = c.call("GET", "/img/Y1/20130901/999999999.png")
    assert status == 404 and "not a candidate" in doc["error"]
    status, doc = c.call("GET", "/no/such/page")
    assert status == 404 and doc == {"error": "not found: /no/such/page"}
    with open_verdicts(served["db"]) as db:
        assert db.read(standing=False).query("scanner == 'checker'").empty  # nothing written
    # The good request, twice: the second is refused (a client retrying), one row.
    assert c.call("POST", "/api/verdict", ok)[0] == 200
    status, doc = c.call("POST", "/api/verdict", ok)
    assert status == 409 and "judged" in doc["error"]
    status, png = c.call("GET", item["img"] if item["img"].startswith("/") else "/" + item["img"])
    assert status == 200 and png[:8] == b"\x89PNG\r\n\x1a\n"
    with open_verdicts(served["db"]) as db:
        rows = db.read().query("scanner == 'checker'")
    assert len(rows) == 1 and rows["seconds"].iloc[0] == 1.25
    assert rows["model_version"].iloc[0] == item["model_version"]
    assert rows["score"].iloc[0] == pytest.approx(item["score"])


def test_queue_orders(served) -> None:
    c = Client(served["url"])
    cand = served["scanning"].candidates
    for order, key in (("best", lambda r: -r["score"]),
                       ("threshold", lambda r: abs(r["score"] - r["threshold"]))):  # fmt: skip
        sid = c.session(f"order-{order}", order)
        got = c.call("GET", f"/api/next?session={sid}&n=20")[1]["items"]
        keys = [key(r) for r in got]
        assert keys == sorted(keys) and len(got) == 20
        assert keys[0] == pytest.approx(min(key(r) for r in cand.rows))


def test_one_verdict_a_stamp_spreads_scanners_over_different_stamps(served) -> None:
    scanning = prepare(served["scores"], served["store"], db=str(served["db"].with_name("k1.db")))
    srv = ThreadServer(scanning)
    try:
        c = Client(srv.url)
        a, b = c.session("a"), c.session("b")
        got_a = {r["stamp_id"] for r in c.call("GET", f"/api/next?session={a}&n=10")[1]["items"]}
        got_b = {r["stamp_id"] for r in c.call("GET", f"/api/next?session={b}&n=10")[1]["items"]}
        assert len(got_a) == len(got_b) == 10 and not got_a & got_b
    finally:
        srv.stop()


def test_token_is_required_on_every_request(served) -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")
    srv = ThreadServer(served["scanning"], token="s3cret-token")
    try:
        anon = Client(srv.url)
        for path in ("/", "/api/next?session=x", "/img/Y1/20130901/1.png", "/static/scan.js"):
            status, doc = anon.call("GET", path)
            assert status == 401 and "token" in doc["error"], path
        assert anon.call("GET", "/?token=wrong")[0] == 401
        assert anon.call("GET", "/", headers={"Authorization": "Bearer s3cret-tokeN"})[0] == 401
        conn = http.client.HTTPConnection("127.0.0.1", int(srv.url.rsplit(":", 1)[1]))
        conn.request("GET", "/?token=s3cret-token")
        r = conn.getresponse()
        cookie = r.getheader("Set-Cookie").split(";")[0]
        assert r.status == 200 and b"s2v scan" in r.read() and cookie == "s2v_token=s3cret-token"
        assert anon.call("GET", "/static/scan.js", headers={"Cookie": cookie})[0] == 200
        assert Client(srv.url, token="s3cret-token").session("tok")
    finally:
        srv.stop()


def test_eight_scanners_at_once_lose_and_duplicate_nothing(served) -> None:
    """8 scanners x 100 verdicts at once through the API: every acknowledged verdict is one row,
    no scanner is shown a stamp twice, no (scanner, stamp) has two standing verdicts."""
    n_each, results, errors = 100, {}, []

    def scanner(k: int) -> None:
        try:
            c = Client(served["url"])
            sid = c.session(f"load{k}", "best" if k % 2 else "threshold")
            shown, acked, queue = [], [], []
            while len(acked) < n_each:
                if not queue:
                    status, doc = c.call("GET", f"/api/next?session={sid}&n=5")
                    assert status == 200 and doc["items"], doc
                    queue = doc["items"]
                    shown += [r["stamp_id"] for r in queue]
                r = queue.pop(0)
                status, doc = c.call("POST", "/api/verdict", {"session": sid, "season": "Y1",
                                     "stamp_id": r["stamp_id"], "verdict": ("real", "bogus", "skip")[len(acked) % 3],
                                     "seconds": 0.5})  # fmt: skip
                assert status == 200, doc
                acked.append(doc["id"])
            results[k] = (shown, acked)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=scanner, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    with open_verdicts(served["db"]) as db:
        rows = db.read().query("scanner.str.startswith('load')", engine="python")
    assert len(rows) == 8 * n_each
    assert sorted(rows["id"]) == sorted(i for _, acked in results.values() for i in acked)
    assert not rows.duplicated(["scanner", "stamp_id"]).any()
    for shown, _ in results.values():
        assert len(shown) == len(set(shown))  # not shown again


def _start_cli(args: list[str]) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "s2v_batch.cli", "scan", *args, "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
    )  # fmt: skip
    lines = []
    for line in proc.stdout:
        lines.append(line)
        m = re.search(r"open (http://\S+)", line)
        if m:
            return proc, m.group(1)
    raise AssertionError(f"s2v scan printed no URL: {''.join(lines)}")


def test_cli_stops_on_ctrl_c_and_a_sigkill_loses_no_committed_verdict(served, tmp_path) -> None:
    db = tmp_path / "killed.sqlite"
    args = [str(served["scores"]), "--store", str(served["store"]), "--db", str(db)]
    proc, url = _start_cli(args)
    proc.send_signal(signal.SIGINT)
    rest = proc.stdout.read()
    assert proc.wait(timeout=60) == 0 and "scan: stopped" in rest and "Traceback" not in rest

    proc, url = _start_cli(args)
    acked: list[int] = []
    c = Client(url)
    sid = c.session("victim")
    stop = threading.Event()

    def work() -> None:
        try:
            while not stop.is_set():
                items = c.call("GET", f"/api/next?session={sid}&n=5")[1]["items"]
                for r in items:
                    status, doc = c.call("POST", "/api/verdict", {"session": sid, "season": "Y1",
                                         "stamp_id": r["stamp_id"], "verdict": "real", "seconds": 0.1})  # fmt: skip
                    acked.append(doc["id"])
        except (OSError, http.client.HTTPException):
            return  # the server is gone

    t = threading.Thread(target=work)
    t.start()
    while len(acked) < 30:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    stop.set()
    t.join()
    with open_verdicts(db) as vdb:
        rows = vdb.read()
    # Every verdict answered 200 is there; at most the one in flight at the kill is extra.
    assert set(acked) <= set(rows["id"]) and len(rows) - len(acked) in (0, 1)
    assert not rows.duplicated(["scanner", "stamp_id"]).any()


# ----------------------------------------------------------------------------- the browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium = next((p for n in ("chromium", "chromium-browser") if (p := shutil.which(n))), None)
    if chromium is None:
        skip_or_fail("no chromium on PATH (Debian: apt-get install -y chromium; .ci/run does)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        skip_or_fail("playwright is not installed (pip install -e '.[dev]')")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        yield b
        b.close()


def test_page_is_driven_by_keys_in_chromium(browser, served) -> None:
    page = browser.new_page(viewport={"width": 1100, "height": 720})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: errors.append(r.url) if "127.0.0.1" not in r.url else None)

    def shown() -> int:
        page.wait_for_function("document.getElementById('stamp').dataset.stampId")
        return int(page.eval_on_selector("#stamp", "e => e.dataset.stampId"))

    def next_after(old: int) -> int:
        page.wait_for_function(
            f"document.getElementById('stamp').dataset.stampId && "
            f"document.getElementById('stamp').dataset.stampId !== '{old}' && "
            f"document.getElementById('stamp').complete"
        )
        return shown()

    def rows(n: int) -> Any:
        for _ in range(500):
            with open_verdicts(served["db"]) as db:
                r = db.read().query("scanner == 'pw'").reset_index(drop=True)
            if len(r) >= n:
                return r
            time.sleep(0.02)
        raise AssertionError(f"expected {n} rows of scanner pw, found {len(r)}")

    page.goto(served["url"] + "/?scanner=pw&order=best")
    s1 = shown()
    cand = served["scanning"].candidates
    assert s1 == cand.rows[cand.orders["best"][0]]["stamp_id"]  # ties in score: by stamp_id hash
    assert page.eval_on_selector("#stamp", "e => e.naturalWidth") == 3 * 51 + 4
    page.keyboard.press("r")
    s2 = next_after(s1)
    page.keyboard.press("b")
    s3 = next_after(s2)
    page.keyboard.press("s")
    s4 = next_after(s3)
    r = rows(3)
    assert list(zip(r["stamp_id"], r["verdict"], strict=True)) == [
        (s1, "real"), (s2, "bogus"), (s3, "skip")]  # fmt: skip
    assert (r["seconds"] > 0).all() and (r["seconds"] < 600).all()
    page.keyboard.press("u")  # the skip of s3 taken back: s3 is shown again
    assert next_after(s4) == s3
    r = rows(4)
    assert r["verdict"].iloc[-1] == "undo" and r["undoes"].iloc[-1] == r["id"].iloc[2]
    page.keyboard.press("r")
    assert next_after(s3) == s4
    r = rows(5)
    standing = r[r["verdict"] != "undo"].drop(index=2)
    assert dict(zip(standing["stamp_id"], standing["verdict"], strict=True)) == {
        s1: "real", s2: "bogus", s3: "real"}  # fmt: skip
    page.wait_for_function("document.getElementById('progress').textContent.startsWith('3 of')")
    assert f"3 of {served['n']} judged by pw" in page.inner_text("#progress")
    page.keyboard.press("?")
    assert page.is_visible("#help")
    page.keyboard.press("Escape")
    assert not page.is_visible("#help")
    (ROOT / "docs").mkdir(exist_ok=True)
    page.screenshot(path=str(ROOT / "docs" / "scan.png"))
    # Not shown again: a new page (a new session; the name kept in the browser) starts after
    # the stamps this scanner judged, though it asks for the best first again.
    page.goto(served["url"] + "/")
    first = shown()
    assert first not in {s1, s2, s3}
    assert page.input_value("#scanner") == "pw"
    assert not errors, errors
    page.close()


def test_commands_refuse_bad_input_in_one_line(served, tmp_path, capsys) -> None:
    from s2v_batch.cli.main import main

    scores, store = str(served["scores"]), str(served["store"])
    empty = tmp_path / "empty"
    empty.mkdir()
    train = ["--out", str(tmp_path / "m"), "--data-description", "x", "--simulated"]
    cases = [
        (["scan", str(tmp_path / "nowhere"), "--store", store], "scores root"),
        (["scan", scores, "--store", str(empty)], "no stored nights under"),
        (["scan", scores, "--store", store, "--night", "20990101"], "no scored candidates"),
        (
            ["scan", scores, "--store", store, "--db", str(tmp_path / "no" / "v.sqlite")],
            "folder of the verdict database",
        ),  # fmt: skip
        (["labels", "export", str(tmp_path / "none.sqlite"), "--out", "x.csv"], "does not exist"),
        (
            ["train", store, *train, "--verdicts", str(tmp_path / "none.sqlite")],
            "verdict database",
        ),  # fmt: skip
        (
            ["report", scores, "--out", str(tmp_path / "r"), "--verdicts", str(tmp_path / "n.db")],
            "verdict database",
        ),  # fmt: skip
    ]
    for argv, words in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) == 1, (argv, err)
    for argv in (["scan", scores, "--store", store, "--per-stamp", "0"], ["labels"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
    capsys.readouterr()


def test_alert_scores_give_the_disagree_order_and_the_alert_fields(tmp_path) -> None:
    """ZTF-like scores (written here: the order is arithmetic on the columns): `disagree` puts
    the largest |score - drb| first, stamps without drb last; the alert fields are shown."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from s2v_batch.scan.queue import load_candidates

    part = tmp_path / "season=ZTF2024" / "night=20240101"
    part.mkdir(parents=True)
    score = [0.9, 0.8, 0.95, 0.7, 0.1]
    drb = [0.85, 0.1, None, 0.6, 0.9]
    pq.write_table(pa.table({
        "stamp_id": pa.array([1, 2, 3, 4, 5], pa.int64()), "score": pa.array(score, pa.float32()),
        "is_candidate": [True, True, True, True, False], "threshold": pa.array([0.5] * 5, pa.float32()),
        "model_version": ["z-1"] * 5, "model_sha256": ["ab"] * 5, "error": pa.array([None] * 5, pa.string()),
        "drb": pa.array(drb, pa.float32()), "objectId": ["ZTF24a", "ZTF24b", "ZTF24c", "ZTF24d", "ZTF24e"],
        "band": ["g", "r", "g", "i", "r"], "magpsf": pa.array([18.5] * 5, pa.float32()),
        "ra": [10.0] * 5, "dec": [-5.0] * 5,
    }), part / "part-0.parquet")  # fmt: skip
    cand = load_candidates(tmp_path)
    ids = lambda order: [cand.rows[i]["stamp_id"] for i in cand.orders[order]]  # noqa: E731
    assert ids("disagree") == [2, 4, 1, 3] and ids("best") == [3, 1, 2, 4]
    assert ids("threshold") == [4, 2, 1, 3]
    row = cand.row("ZTF2024", 2)
    assert row["objectId"] == "ZTF24b" and row["band"] == "r" and row["drb"] == pytest.approx(0.1)
    assert cand.row("ZTF2024", 3)["drb"] is None  # JSON null, not NaN
