"""Progress reporting for the search (the logging set-up every CLI shares is :mod:`data._log`).

On a terminal the search shows ``tqdm`` bars (trials, folds, epochs, with the current best score);
when stderr is not a TTY (CI, log files, the Streamlit app) it writes plain log lines instead. Either
way every step is also sent, as a small dict, to an optional ``on_progress`` callback.

Progress events (all keys are plain JSON types)::

    {"event": "phase",       "phase": "data"|"search"|"refit"|"audit"|"leaderboard"|"done", "message": str}
    {"event": "trial_start", "trial": int, "model": str, "n_done": int, "n_total": int}
    {"event": "epoch",       "trial": int, "fold": int, "n_folds": int, "epoch": int, "n_epochs": int,
                             "val_auc": float, "running_auc": float}
    {"event": "trial_end",   "trial": int, "state": "COMPLETE"|"PRUNED"|"FAIL", "value": float|None,
                             "best": float|None, "n_done": int, "n_total": int}
    {"event": "refit",       "model": str, "i": int, "n": int}

``on_progress`` exceptions are logged and ignored: a broken progress bar never stops a search.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Any, Callable

from data._log import setup_logging

logger = logging.getLogger(__name__)

__all__ = ["setup_logging", "Progress", "ProgressCallback"]

ProgressCallback = Callable[[dict[str, Any]], None]



def _use_bars(enabled: bool | None) -> bool:
    if enabled is not None:
        return enabled
    if os.environ.get("STROKECT_NO_PROGRESS"):
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class Progress:
    """Progress of one search: tqdm bars on a TTY, log lines otherwise, plus an event callback.

    Args:
        n_trials: Trials this run aims at (for the trials bar).
        n_folds: Folds per trial.
        n_epochs: Epochs per fold (the maximum, when epochs are searched).
        on_progress: Optional callback receiving event dicts (see the module docstring).
        bars: Force bars on/off; ``None`` = on when stderr is a TTY.
    """

    def __init__(
        self,
        *,
        n_trials: int,
        n_folds: int,
        n_epochs: int,
        on_progress: ProgressCallback | None = None,
        bars: bool | None = None,
    ) -> None:
        self.n_trials = n_trials
        self.n_folds = n_folds
        self.n_epochs = n_epochs
        self.on_progress = on_progress
        self.bars = _use_bars(bars)
        self.best: float | None = None
        self.n_done = 0
        self._trial_bar: Any = None
        self._fold_bar: Any = None
        self._epoch_bar: Any = None
        if self.bars:
            from tqdm import tqdm

            self._trial_bar = tqdm(total=n_trials, desc="trials", position=0, leave=True, dynamic_ncols=True)
            # the fold in progress, counted from 1 ("fold 1/3"), not tqdm's count of finished folds ("0/3")
            self._fold_bar = tqdm(total=n_folds, desc=f"fold 1/{n_folds}", position=1, leave=False, dynamic_ncols=True,
                                  bar_format="{desc} |{bar}|{postfix}")
            self._epoch_bar = tqdm(total=n_epochs, desc="epochs", position=2, leave=False, dynamic_ncols=True)

    # -- events ---------------------------------------------------------------------------------
    def emit(self, event: dict[str, Any]) -> None:
        """Send one event to the callback (errors in the callback are logged, never raised)."""
        if self.on_progress is None:
            return
        try:
            self.on_progress(event)
        except Exception:  # noqa: BLE001 - a UI callback must not stop the search
            logger.exception("on_progress callback failed on %s", event.get("event"))

    def phase(self, phase: str, message: str = "") -> None:
        logger.info("%s%s", phase, f": {message}" if message else "")
        self.emit({"event": "phase", "phase": phase, "message": message})

    def trial_start(self, trial: int, model: str) -> None:
        if self.bars:
            self._fold_bar.reset(total=self.n_folds)
            self._fold_bar.set_description_str(f"fold 1/{self.n_folds}", refresh=False)
            self._epoch_bar.reset(total=self.n_epochs)
            self._trial_bar.set_postfix_str(f"#{trial} {model} | best {self._fmt(self.best)}")
        else:
            logger.info("trial %d: %s", trial, model)
        self.emit({"event": "trial_start", "trial": trial, "model": model,
                   "n_done": self.n_done, "n_total": self.n_trials})

    def epoch(self, trial: int, fold: int, epoch: int, val_auc: float, running_auc: float,
              n_epochs: int | None = None) -> None:
        n_epochs = n_epochs or self.n_epochs
        if self.bars:
            if epoch == 0:
                self._fold_bar.set_description_str(f"fold {fold + 1}/{self.n_folds}")
                self._epoch_bar.reset(total=n_epochs)
            self._epoch_bar.update(1)
            self._epoch_bar.set_postfix_str(f"val_auc {val_auc:.3f} running {running_auc:.3f}")
        else:
            logger.debug("trial %d fold %d/%d epoch %d/%d: val_auc %.4f running %.4f",
                         trial, fold + 1, self.n_folds, epoch + 1, n_epochs, val_auc, running_auc)
        self.emit({"event": "epoch", "trial": trial, "fold": fold, "n_folds": self.n_folds, "epoch": epoch,
                   "n_epochs": n_epochs, "val_auc": float(val_auc), "running_auc": float(running_auc)})

    def fold_end(self, trial: int, fold: int, auc: float) -> None:
        if self.bars:
            self._fold_bar.update(1)
            self._fold_bar.set_postfix_str(f"last fold auc {auc:.3f}")
        else:
            logger.info("trial %d fold %d/%d: val_auc %.4f", trial, fold + 1, self.n_folds, auc)

    def trial_end(self, trial: int, state: str, value: float | None, best: float | None = None,
                  message: str = "") -> None:
        self.n_done += 1
        if best is not None:
            self.best = best
        elif value is not None and state == "COMPLETE":
            self.best = value if self.best is None else max(self.best, value)
        if self.bars:
            self._trial_bar.update(1)
            self._trial_bar.set_postfix_str(f"best {self._fmt(self.best)}")
        text = f"trial {trial} {state}"
        if value is not None:
            text += f": cv_auc {value:.4f}"
        if message:
            text += f" ({message})"
        logger.info("%s | best %s | %d/%d", text, self._fmt(self.best), self.n_done, self.n_trials)
        self.emit({"event": "trial_end", "trial": trial, "state": state, "value": value, "best": self.best,
                   "n_done": self.n_done, "n_total": self.n_trials})

    def refit(self, model: str, i: int, n: int) -> None:
        logger.info("refit %d/%d: %s (threshold on its calibration part)", i + 1, n, model)
        self.emit({"event": "refit", "model": model, "i": i, "n": n})

    def close(self) -> None:
        for bar in (self._epoch_bar, self._fold_bar, self._trial_bar):
            if bar is not None:
                bar.close()
        self._trial_bar = self._fold_bar = self._epoch_bar = None
        self.bars = False

    @staticmethod
    def _fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:.4f}"
