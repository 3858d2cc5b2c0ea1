"""`maskcl board`: the wire-version rewrite, the proxy in front of nx-27017, and Omniboard in a
headless browser (skipped unless Omniboard and Chromium are installed here)."""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import bson
import pytest

from maskcl.report.board import HEADER, OP_MSG, OP_REPLY, WireProxy, find_omniboard, free_port, rewrite_reply

sys.path.insert(0, str(Path(__file__).parent))
from mongo_fixture import start_nx27017, stop  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def op_msg(doc: dict, checksum: bool = False) -> bytes:
    body = struct.pack("<I", 1 if checksum else 0) + b"\x00" + bson.encode(doc) + (b"\x00\x00\x00\x00" if checksum else b"")
    return HEADER.pack(HEADER.size + len(body), 7, 3, OP_MSG) + body


def op_reply(doc: dict) -> bytes:
    body = struct.pack("<iqii", 8, 0, 0, 1) + bson.encode(doc)
    return HEADER.pack(HEADER.size + len(body), 9, 5, OP_REPLY) + body


def decode_op_msg(message: bytes) -> tuple[int, dict]:
    length, _, _, op = HEADER.unpack_from(message)
    assert length == len(message) and op == OP_MSG
    (flags,) = struct.unpack_from("<I", message, HEADER.size)
    return flags, bson.decode(message[HEADER.size + 5:])


def test_hello_reply_advertises_wire_version_6() -> None:
    flags, doc = decode_op_msg(rewrite_reply(op_msg({"ok": 1.0, "minWireVersion": 17, "maxWireVersion": 21})))
    assert doc == {"ok": 1.0, "minWireVersion": 6, "maxWireVersion": 21} and flags == 0


def test_a_checksummed_reply_loses_its_stale_checksum() -> None:
    flags, doc = decode_op_msg(rewrite_reply(op_msg({"minWireVersion": 17}, checksum=True)))
    assert flags == 0 and doc == {"minWireVersion": 6}


def test_legacy_ismaster_reply_is_rewritten() -> None:
    out = rewrite_reply(op_reply({"ismaster": True, "minWireVersion": 17, "maxWireVersion": 17}))
    length, request_id, response_to, op = HEADER.unpack_from(out)
    assert (length, request_id, response_to, op) == (len(out), 9, 5, OP_REPLY)
    assert bson.decode(out[HEADER.size + 20:])["minWireVersion"] == 6


def test_other_messages_pass_untouched() -> None:
    for message in (op_msg({"cursor": {"firstBatch": [{"minWireVersion": 99}]}, "ok": 1}),
                    op_msg({"minWireVersion": 0}), b"\x01\x02", op_msg({"ok": 1})[:-3]):
        assert rewrite_reply(message) == message


@pytest.mark.mongo
def test_pymongo_through_the_proxy_sees_version_6_and_reads_writes(tmp_path: Path) -> None:
    import pymongo

    proc, url = start_nx27017(tmp_path / "nx")
    proxy = WireProxy("127.0.0.1", int(url.rsplit(":", 1)[1])).start()
    try:
        with pymongo.MongoClient(f"mongodb://127.0.0.1:{proxy.port}", serverSelectionTimeoutMS=5000) as client:
            assert client.admin.command("hello")["minWireVersion"] == 6
            client["board_test"]["runs"].insert_one({"_id": 1, "experiment": {"name": "maskcl_train"}})
            assert client["board_test"]["runs"].find_one({"_id": 1})["experiment"]["name"] == "maskcl_train"
    finally:
        proxy.stop()
        stop(proc)


def test_find_omniboard_prefers_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    exe = tmp_path / "omniboard"
    exe.write_text("#!/bin/sh\n")
    monkeypatch.setenv("MASKCL_OMNIBOARD", str(exe))
    assert find_omniboard(tmp_path) == str(exe)
    monkeypatch.setenv("MASKCL_OMNIBOARD", str(tmp_path / "missing"))
    assert find_omniboard(tmp_path) is None


def test_board_without_a_store_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from maskcl.cli import main

    assert main(["board", "--runs", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("maskcl board: error:") and "none" in err and "\n" not in err


def write_store(tmp_path: Path) -> Path:
    """Two real Sacred runs (train with a metric curve, evaluate) in a file store."""
    from sacred import Experiment
    from sacred.observers import FileStorageObserver

    runs = tmp_path / "runs"
    ex = Experiment("maskcl_train", save_git_info=False)
    ex.add_config({"method": "maskcl", "seed": 1, "eps": 0.6})

    @ex.main
    def _main(_run):
        for epoch in range(1, 4):
            _run.log_scalar("test.cc.mAP", 10.0 * epoch, epoch)
        return {"cc": {"mAP": 30.0}}

    ex.observers.append(FileStorageObserver(str(runs)))
    ex.run()
    return runs


@pytest.mark.mongo
def test_board_serves_the_store_without_omniboard(tmp_path: Path) -> None:
    runs = write_store(tmp_path)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "maskcl", "board", "--runs", str(runs), "--data-dir", str(tmp_path / "board"),
         "--port", str(port), "--no-omniboard", "--serve-seconds", "150"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    lines: list[str] = []  # read as it comes: the hint may follow the sync that makes the run findable
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        import pymongo

        deadline = time.monotonic() + 120  # python start, nx-27017 start and the sync, on a loaded machine
        found = None
        while time.monotonic() < deadline and found is None:
            try:
                with pymongo.MongoClient(f"mongodb://127.0.0.1:{port}", serverSelectionTimeoutMS=500) as client:
                    found = client["maskcl"]["runs"].find_one({"experiment.name": "maskcl_train"})
            except pymongo.errors.PyMongoError:
                time.sleep(0.3)
        assert found is not None and found["status"] == "COMPLETED"
        hint_by = time.monotonic() + 30
        while time.monotonic() < hint_by and not any("npx omniboard" in line for line in list(lines)):
            time.sleep(0.1)
    finally:
        proc.terminate()  # SIGTERM: the board stops the server it started
        proc.wait(timeout=30)
        reader.join(timeout=10)
    out = "".join(lines)
    assert "npx omniboard -m 127.0.0.1:" in out and f":{port}:maskcl" in out
    time.sleep(2)
    alive = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(tmp_path / "board") not in alive  # no nx-27017 left behind


def chromium() -> str | None:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


def node_modules() -> Path | None:
    """The node_modules folder of the Omniboard found here, when it also holds puppeteer-core."""
    exe = find_omniboard(REPO)
    if exe is None or shutil.which("node") is None:
        return None
    folder = Path(exe).resolve().parents[2] if "node_modules" in Path(exe).resolve().parts else None
    for candidate in (Path(os.environ.get("NODE_PATH", "")), folder, Path(exe).parent.parent):
        if candidate and (candidate / "puppeteer-core").is_dir():
            return candidate
    return None


@pytest.mark.mongo
@pytest.mark.skipif(chromium() is None or node_modules() is None,
                    reason="needs Omniboard + puppeteer-core (npm install omniboard puppeteer-core; MASKCL_OMNIBOARD) "
                    "and headless Chromium")
def test_omniboard_lists_the_run_and_draws_its_curve(tmp_path: Path) -> None:
    import json

    runs = write_store(tmp_path)
    port, web = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "maskcl", "board", "--runs", str(runs), "--data-dir", str(tmp_path / "board"),
         "--port", str(port), "--web-port", str(web), "--omniboard", find_omniboard(REPO), "--serve-seconds", "300"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", web)) == 0:
                    break
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            time.sleep(0.5)
        done = subprocess.run(
            ["node", str(Path(__file__).parent / "browser" / "omniboard_shot.js"), f"http://127.0.0.1:{web}/",
             chromium(), str(tmp_path / "shot"), "1", "test.cc.mAP"],
            capture_output=True, text=True, timeout=240, env={**os.environ, "NODE_PATH": str(node_modules())},
        )
        result = json.loads(done.stdout.strip().splitlines()[-1])
        assert result.get("list_has_run") and result.get("expanded"), result  # the runs list shows the run
        assert result.get("metric_listed") and result.get("curve_svg", 0) > 0, result  # its curve is drawn
        assert (tmp_path / "shot_metric.png").stat().st_size > 0
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
