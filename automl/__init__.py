"""AutoML engine: leakage-aware splits, fold training, Optuna search, metrics and leaderboards."""
