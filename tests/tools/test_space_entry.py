"""tools/space_entry.py, the container's entry point: studies and caches on /data when it is writable."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tools import space_entry

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tools" / "space_entry.py"


def test_writable_persistent_storage_holds_studies_and_caches(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    env = space_entry.storage_env({}, persistent=data, app_dir=tmp_path / "app")
    assert env == {"STROKECT_LEADERBOARDS": str(data / "leaderboards"), "STROKECT_CACHE": str(data / "cache")}
    assert list(data.iterdir()) == []  # the write probe leaves nothing behind


def test_without_persistent_storage_the_app_folder_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app = tmp_path / "app"
    expected = {"STROKECT_LEADERBOARDS": str(app / "leaderboards"), "STROKECT_CACHE": str(app / ".cache")}
    assert space_entry.storage_env({}, persistent=tmp_path / "missing", app_dir=app) == expected
    (tmp_path / "file").write_text("not a folder")
    assert space_entry.storage_env({}, persistent=tmp_path / "file", app_dir=app) == expected
    read_only = tmp_path / "ro"
    read_only.mkdir()
    monkeypatch.setattr(space_entry, "writable_dir", lambda folder: False)  # root ignores chmod, so stub the probe
    assert space_entry.storage_env({}, persistent=read_only, app_dir=app) == expected


def test_variables_already_set_win(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    env = space_entry.storage_env({"STROKECT_LEADERBOARDS": "/elsewhere"}, persistent=data, app_dir=tmp_path)
    assert env == {"STROKECT_CACHE": str(data / "cache")}


def test_writable_dir_probe(tmp_path: Path) -> None:
    assert space_entry.writable_dir(tmp_path)
    assert not space_entry.writable_dir(tmp_path / "missing")


def test_print_shows_storage_and_command_and_starts_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STROKECT_")}
    out = subprocess.run([sys.executable, str(SCRIPT), "--print", "--persistent", str(data)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=60, check=True).stdout.splitlines()
    assert out[:2] == [f"STROKECT_LEADERBOARDS={data / 'leaderboards'}", f"STROKECT_CACHE={data / 'cache'}"]
    assert out[2].endswith("-m streamlit run app.py --server.port 8501 --server.address 0.0.0.0")
    assert list(data.iterdir()) == []


def test_start_execs_streamlit_in_the_app_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for key in ("STROKECT_LEADERBOARDS", "STROKECT_CACHE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.chdir(tmp_path)
    calls = []
    monkeypatch.setattr(space_entry.os, "execvpe", lambda *a: calls.append((*a, Path.cwd())))
    assert space_entry.main(["--persistent", str(data), "--port", "9999"]) == 0
    (file, argv, env, cwd), = calls
    assert file == sys.executable and argv[1:5] == ["-m", "streamlit", "run", "app.py"] and "9999" in argv
    assert cwd == REPO and (cwd / "app.py").is_file()
    assert env["STROKECT_LEADERBOARDS"] == str(data / "leaderboards") and (data / "leaderboards").is_dir()
    assert env["STROKECT_CACHE"] == str(data / "cache") and (data / "cache").is_dir()


@pytest.mark.slow
def test_real_start_serves_the_dashboard(tmp_path: Path) -> None:
    """The container command for real: Streamlit answers its health check on the chosen port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    data = tmp_path / "data"
    data.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STROKECT_")}
    env.update(STROKECT_NO_AUTOSTART="1", STROKECT_NO_GRADIO="1")
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--persistent", str(data), "--port", str(port)],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as reply:
                    assert reply.status == 200
                    break
            except OSError:
                assert time.monotonic() < deadline, "streamlit did not answer within 120 s"
                time.sleep(1)
        assert (data / "leaderboards").is_dir() and (data / "cache").is_dir()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
