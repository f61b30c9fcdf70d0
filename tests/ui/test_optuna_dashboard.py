"""`optuna-dashboard leaderboards/<study>/study.journal` (README) reads the journal the search writes."""
from __future__ import annotations

import io
import json
from pathlib import Path
from wsgiref.util import setup_testing_defaults

import pandas as pd
import pytest

optuna_dashboard = pytest.importorskip("optuna_dashboard")


def _get(app, path: str, query: str = "") -> dict:
    environ: dict = {"PATH_INFO": path, "QUERY_STRING": query, "REQUEST_METHOD": "GET", "wsgi.input": io.BytesIO()}
    setup_testing_defaults(environ)
    status: list[str] = []
    body = b"".join(app(environ, lambda s, headers, exc_info=None: status.append(s)))
    assert status[0].startswith("200"), (status, body[:500])
    return json.loads(body)


def test_dashboard_lists_the_study_and_its_trials(smoke_study: Path) -> None:
    journal = smoke_study / "study.journal"
    config = json.loads((smoke_study / "config.json").read_text())
    # the CLI's own path: `optuna-dashboard FILE` -> get_storage(FILE) -> a journal storage -> the WSGI app
    app = optuna_dashboard.wsgi(str(journal))
    studies = _get(app, "/api/studies")["study_summaries"]
    (study,) = [s for s in studies if s["study_name"] == config["study"]]
    detail = _get(app, f"/api/studies/{study['study_id']}", "after=0")

    board = pd.read_csv(smoke_study / "leaderboard.csv")
    trials = {t["number"]: t for t in detail["trials"]}
    assert set(trials) == set(board["trial"]) and (board["state"] == "COMPLETE").sum() >= 2
    for row in board.itertuples():
        assert trials[row.trial]["state"].lower() == str(row.state).lower()
        if str(row.state).lower() == "complete":
            assert trials[row.trial]["values"][0] == pytest.approx(row.cv_auc_mean, abs=1e-9)
            assert {p["name"] for p in trials[row.trial]["params"]} >= {"model"}
