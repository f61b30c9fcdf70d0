"""Container entry point (the Dockerfile's CMD, a Docker-SDK Hugging Face Space): storage, then the dashboard.

    python tools/space_entry.py            # exec: streamlit run app.py --server.port 8501 --server.address 0.0.0.0
    python tools/space_entry.py --print    # print the environment and the command; start nothing

Storage: a Space with persistent storage has it mounted at ``/data``. When that folder is writable, the
studies (``STROKECT_LEADERBOARDS=/data/leaderboards``) and the phantom/array caches
(``STROKECT_CACHE=/data/cache``) go there and survive restarts; otherwise they go to ``./leaderboards``
and ``./.cache`` of the app folder, which a Space loses when it restarts. Variables already set win.
On the first start there is no study, so the dashboard builds the demo study (``--preset demo``, with
a progress bar) into that folder; later starts reuse it.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

PERSISTENT = Path("/data")  # Hugging Face Spaces' persistent storage mount
PORT = 8501                 # the README's `app_port` for the Docker SDK


def writable_dir(folder: Path) -> bool:
    """Whether files can be created in ``folder`` (a real probe: permission bits lie on some mounts)."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def storage_env(environ: Mapping[str, str], *, persistent: Path = PERSISTENT, app_dir: Path) -> dict[str, str]:
    """The variables to add to ``environ``: where studies and caches live.

    Args:
        environ: The current environment; variables it sets are kept.
        persistent: The persistent-storage mount, used when it is a writable folder.
        app_dir: The app folder, the fallback.

    Returns:
        ``STROKECT_LEADERBOARDS`` and ``STROKECT_CACHE`` where ``environ`` lacks them.
    """
    if persistent.is_dir() and writable_dir(persistent):
        wanted = {"STROKECT_LEADERBOARDS": persistent / "leaderboards", "STROKECT_CACHE": persistent / "cache"}
    else:
        wanted = {"STROKECT_LEADERBOARDS": app_dir / "leaderboards", "STROKECT_CACHE": app_dir / ".cache"}
    return {key: str(value) for key, value in wanted.items() if not environ.get(key)}


def streamlit_command(port: int = PORT) -> list[str]:
    """``streamlit run app.py`` on all interfaces (the container's port is published by the host)."""
    return [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
            "--server.address", "0.0.0.0"]


def main(argv: Sequence[str] | None = None) -> int:
    """Set up storage, then replace this process with Streamlit (``--print``: only show what would run)."""
    parser = argparse.ArgumentParser(prog="python tools/space_entry.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=PORT, help=f"port to serve on (default {PORT})")
    parser.add_argument("--persistent", type=Path, default=PERSISTENT, help="persistent-storage mount (default /data)")
    parser.add_argument("--print", dest="dry_run", action="store_true", help="print the environment and command")
    args = parser.parse_args(argv)
    app_dir = Path(__file__).resolve().parents[1]
    added = storage_env(os.environ, persistent=args.persistent, app_dir=app_dir)
    env = {**os.environ, **added}
    command = streamlit_command(args.port)
    if args.dry_run:
        for key in ("STROKECT_LEADERBOARDS", "STROKECT_CACHE"):
            print(f"{key}={env[key]}")
        print(shlex.join(command))
        return 0
    for key in ("STROKECT_LEADERBOARDS", "STROKECT_CACHE"):
        Path(env[key]).mkdir(parents=True, exist_ok=True)
    os.chdir(app_dir)
    os.execvpe(command[0], command, env)
    return 0  # pragma: no cover - exec does not return


if __name__ == "__main__":
    raise SystemExit(main())
