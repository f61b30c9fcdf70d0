"""Tests for models.attribution_eval (metric functions, localisation on a trained model, sanity check) and its
study-level front automl.attribution_eval (attribution.csv, CLI), which share the phantom fixtures."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import models
from models.attribution_eval import (
    COLUMNS,
    SANITY_THRESHOLD,
    evaluate,
    lesion_images,
    mass_in_mask,
    pointing_game,
    random_pointing,
    randomized_model,
    rank_similarity,
)
from automl.attribution_eval import main, write_attribution_csv

CLASSES = ["Normal", "Stroke"]


# ------------------------------------------------------------------------------- metric functions
def _square_mask(shape=(10, 10), rows=slice(2, 5), cols=slice(2, 5)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[rows, cols] = True
    return mask


def test_pointing_game_hit_and_miss() -> None:
    mask = _square_mask()
    heat = np.zeros((10, 10))
    heat[3, 3] = 1.0
    assert pointing_game(heat, mask) == 1.0
    heat[8, 8] = 2.0
    assert pointing_game(heat, mask) == 0.0
    assert pointing_game(heat, mask.astype(np.uint8) * 255) == 0.0  # 0/255 masks are accepted
    # the miss at (8, 8) lies sqrt(32) = 5.66 px from the mask's corner (4, 4)
    assert pointing_game(heat, mask, tolerance=6) == 1.0
    assert pointing_game(heat, mask, tolerance=5) == 0.0


def test_pointing_game_ties_are_fair() -> None:
    mask = _square_mask()
    assert pointing_game(np.ones((10, 10)), mask) == pytest.approx(mask.mean())
    heat = np.zeros((10, 10))
    heat[3, 3] = heat[9, 9] = 1.0
    assert pointing_game(heat, mask) == 0.5


def test_mass_in_mask() -> None:
    mask = _square_mask()
    heat = np.zeros((10, 10))
    heat[3, 3] = 3.0
    heat[0, 0] = 1.0
    heat[9, 9] = -5.0  # evidence against the class is not mass
    assert mass_in_mask(heat, mask) == pytest.approx(0.75)
    assert mass_in_mask(np.ones((10, 10)), mask) == pytest.approx(mask.mean())
    assert np.isnan(mass_in_mask(-np.ones((10, 10)), mask))


@pytest.mark.parametrize("fn", [pointing_game, mass_in_mask])
@pytest.mark.parametrize(
    ("heat", "mask", "match"),
    [
        (np.zeros((10, 10)), np.zeros((10, 9), bool), "differ"),
        (np.zeros((10, 10)), np.zeros((10, 10), bool), "mask is empty"),
        (np.zeros(10), np.ones(10, bool), "2-D"),
        (np.full((10, 10), np.nan), np.ones((10, 10), bool), "NaN"),
    ],
)
def test_metric_errors(fn, heat, mask, match) -> None:
    with pytest.raises(ValueError, match=match):
        fn(heat, mask)


def test_pointing_game_bad_tolerance() -> None:
    with pytest.raises(ValueError, match="tolerance"):
        pointing_game(np.zeros((4, 4)), np.ones((4, 4), bool), tolerance=-1)


def test_random_pointing_matches_area_fraction() -> None:
    mask = _square_mask((20, 20), slice(0, 10), slice(0, 8))  # 20 % of the image
    value = random_pointing(mask, n_maps=4000, seed=1)
    assert value == pytest.approx(0.2, abs=0.03)
    assert random_pointing(mask, n_maps=50, seed=7) == random_pointing(mask, n_maps=50, seed=7)
    with pytest.raises(ValueError, match="n_maps"):
        random_pointing(mask, n_maps=0)
    with pytest.raises(ValueError, match="non-empty"):
        random_pointing(np.zeros((4, 4), bool))


def test_rank_similarity() -> None:
    a = np.arange(16.0).reshape(4, 4)
    assert rank_similarity(a, a * 3 + 1) == pytest.approx(1.0)
    assert rank_similarity(a, -a) == pytest.approx(1.0), "absolute maps: the sign does not matter"
    assert rank_similarity(a, a.max() - a) == pytest.approx(-1.0)
    assert rank_similarity(np.zeros((4, 4)), np.zeros((4, 4))) == 1.0
    assert rank_similarity(np.zeros((4, 4)), a) == 0.0
    with pytest.raises(ValueError, match="different sizes"):
        rank_similarity(a, a[:2])


def test_randomized_model_is_same_architecture_new_weights() -> None:
    torch.manual_seed(5)
    net = models.create_model("tiny_cnn", num_classes=2, image_size=32)
    fresh = randomized_model(net, seed=0)
    again = randomized_model(net, seed=0)
    assert type(fresh.backbone) is type(net.backbone) and fresh.image_size == 32 and not fresh.training
    a, b, c = (dict(m.named_parameters()) for m in (net, fresh, again))
    assert a.keys() == b.keys()
    assert any(not torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(b[k], c[k]) for k in b), "same seed, same re-initialisation"
    with pytest.raises(ValueError, match="model_name"):
        randomized_model(torch.nn.Linear(2, 2))


def test_randomized_model_keeps_a_frozen_lanes_fitted_head() -> None:
    from sklearn.linear_model import LogisticRegression

    from models.frozen import head_from_sklearn

    base = models.create_model("efficientnet_lite0", num_classes=2, image_size=32, pretrained="no")
    width = int(base.backbone.num_features)
    Z, y = np.random.default_rng(0).normal(size=(20, width)), np.array([0, 1] * 10)
    head = head_from_sklearn("logreg", num_classes=2, estimator=LogisticRegression().fit(Z, y),
                             center=np.zeros(width), scale=np.ones(width))
    lane = models.assemble_lane("efficientnet_lite0+logreg", base, head)
    fresh = randomized_model(lane, seed=0)  # the head has no weights to re-initialise: it stays fitted
    assert fresh.backbone.head.fitted and torch.equal(fresh.backbone.head.weight, lane.backbone.head.weight)
    assert any(not torch.equal(a, b) for a, b in zip(fresh.backbone.net.parameters(), lane.backbone.net.parameters()))
    with torch.inference_mode():
        assert torch.isfinite(fresh(torch.rand(2, 1, 32, 32))).all()


# ------------------------------------------------------------------------------- phantom + models
@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from data.phantom import generate_phantom

    return generate_phantom(tmp_path_factory.mktemp("phantom") / "easy", n=80, size=64, seed=0, difficulty=0.0)


@pytest.fixture(scope="module")
def table(phantom: Path) -> pd.DataFrame:
    from data import scan_folder

    return scan_folder(phantom).table


def _save(net: torch.nn.Module, folder: Path, classes=CLASSES) -> Path:
    return models.save_checkpoint(net, folder, card={"classes": list(classes)})


def test_lesion_images(phantom: Path, table: pd.DataFrame) -> None:
    from data.phantom import load_mask

    images = lesion_images(phantom, table)
    assert images and all(img.mask.any() and img.target == "Stroke" for img in images)
    with_mask = sum(1 for p in table["path"] if (m := load_mask(phantom, p)) is not None and m.any())
    assert len(images) == with_mask
    subset = lesion_images(phantom, table, max_images=5, seed=1)
    again = lesion_images(phantom, table, max_images=5, seed=1)
    assert len(subset) == 5 and [i.name for i in subset] == [i.name for i in again]
    assert [i.name for i in subset] == sorted((i.name for i in subset), key=[i.name for i in images].index)
    normal = table[table["label"] == "Normal"]
    with pytest.raises(ValueError, match="No lesion masks"):
        lesion_images(phantom, normal)
    with pytest.raises(ValueError, match="lacks column"):
        lesion_images(phantom, table[["path"]])


def test_evaluate_schema_and_random_baseline(tmp_path: Path, phantom: Path, table: pd.DataFrame) -> None:
    torch.manual_seed(0)
    predictor = models.load_predictor(_save(models.create_model("tiny_cnn", num_classes=2, image_size=32),
                                            tmp_path / "tiny"), device="cpu")
    images = lesion_images(phantom, table, max_images=4)
    frame = evaluate({"tiny_cnn": predictor}, images, methods=["saliency", "grad_cam", "attention_rollout"],
                     sanity_images=2, n_random=200)
    assert list(frame.columns) == COLUMNS
    assert frame["method"].tolist() == ["saliency", "grad_cam"], "rollout does not apply to a CNN: skipped"
    from data import resize_pad

    small = [resize_pad(img.mask.astype(np.float32), 32) >= 0.5 for img in images]
    small = [m for m in small if m.any()]
    area = np.mean([m.mean() for m in small])
    assert frame["random_mass"].tolist() == pytest.approx([area, area])
    assert frame["random_pointing"].iloc[0] == pytest.approx(area, abs=0.05)
    assert (frame["n"] == len(small)).all() and len(small) >= 1
    assert frame[["pointing_game", "mass_in_mask", "sanity_similarity", "seconds_per_image"]].notna().all().all()
    assert frame["sanity_flag"].dtype == bool
    with pytest.raises(ValueError, match="Unknown attribution method"):
        evaluate({"tiny_cnn": predictor}, images, methods=["lime"])
    with pytest.raises(ValueError, match="No lesion images"):
        evaluate({"tiny_cnn": predictor}, [])


def test_write_attribution_csv_is_atomic(tmp_path: Path) -> None:
    frame = pd.DataFrame([{c: 0 for c in COLUMNS}])
    path = write_attribution_csv(frame, tmp_path)
    assert path == tmp_path / "attribution.csv"
    assert list(pd.read_csv(path).columns) == COLUMNS
    assert [p.name for p in tmp_path.iterdir()] == ["attribution.csv"], "no temporary file left behind"
    with pytest.raises(ValueError, match="lacks column"):
        write_attribution_csv(frame.drop(columns="n"), tmp_path)


def _hand_built_study(root: Path, phantom: Path, table: pd.DataFrame, net: torch.nn.Module) -> Path:
    """A study folder with the files automl.results reads, and one refitted model."""
    study = root / "tiny"
    (study / "models").mkdir(parents=True)
    (study / "config.json").write_text(json.dumps({"study": "tiny", "data_dir": str(phantom),
                                                   "classes": CLASSES}))
    pd.DataFrame([{"rank": 1, "trial": 0, "model": "simple_cnn", "state": "COMPLETE", "cv_auc_mean": 0.9,
                   "refit": True}]).to_csv(study / "leaderboard.csv", index=False)
    split = table[["path", "label", "y", "subject"]].copy()
    test = np.random.default_rng(0).random(len(split)) < 0.5
    split["part"] = np.where(test, "test", "cv")
    split["fold"] = np.where(test, -1, 0)
    split.to_csv(study / "split.csv", index=False)
    _save(net, study / "models" / "simple_cnn")
    return study


def test_cli_on_a_hand_built_study(tmp_path: Path, phantom: Path, table: pd.DataFrame) -> None:
    torch.manual_seed(0)
    net = models.create_model("simple_cnn", num_classes=2, image_size=64)
    study = _hand_built_study(tmp_path, phantom, table, net)
    code = main(["--study", "tiny", "--leaderboards", str(tmp_path), "--methods", "grad_cam", "saliency",
                 "--max-images", "3", "--sanity-images", "1"])
    assert code == 0
    frame = pd.read_csv(study / "attribution.csv")
    assert list(frame.columns) == COLUMNS
    assert set(frame["method"]) == {"grad_cam", "saliency"} and set(frame["model"]) == {"simple_cnn"}
    assert (frame["n"] == 3).all()
    from automl.results import load_study

    assert load_study(study).attribution is not None


def test_cli_errors(tmp_path: Path, phantom: Path, table: pd.DataFrame, capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--study", "missing", "--leaderboards", str(tmp_path)])
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--study", "x", "--methods", "lime"])
    torch.manual_seed(0)
    study = _hand_built_study(tmp_path, phantom, table, models.create_model("simple_cnn", num_classes=2,
                                                                             image_size=64))
    assert main(["--study", "tiny", "--leaderboards", str(tmp_path), "--models", "resnet18"]) == 2
    config = json.loads((study / "config.json").read_text())
    config["data_dir"] = str(tmp_path / "gone")
    (study / "config.json").write_text(json.dumps(config))
    assert main(["--study", "tiny", "--leaderboards", str(tmp_path)]) == 2
    assert not (study / "attribution.csv").exists()


# ------------------------------------------------------------------------------- a trained model
@pytest.fixture(scope="module")
def trained(phantom: Path, tmp_path_factory: pytest.TempPathFactory):
    """simple_cnn trained a few epochs on the easy phantom with the project's own training engine."""
    from automl.train import TrainConfig, fit_fold
    from data import load_arrays, scan_folder

    manifest = scan_folder(phantom)
    X = load_arrays(manifest, size=64)
    y = manifest.table["y"].to_numpy()
    order = np.random.default_rng(0).permutation(len(y))
    train, val = order[:60], order[60:]
    config = TrainConfig(model="simple_cnn", epochs=8, lr=1e-3, batch_size=16, pretrained="no",
                         aug_strength=0.0, patience=None, seed=0, device="cpu")
    result = fit_fold(X[train], y[train], X[val], y[val], config=config, num_classes=2)
    assert result.best_metrics["val_auc"] > 0.8, "the model must have learnt the easy task"
    folder = _save(result.model, tmp_path_factory.mktemp("trained") / "simple_cnn", manifest.classes)
    return models.load_predictor(folder, device="cpu")


@pytest.mark.slow
def test_trained_model_beats_random_baseline(trained, phantom: Path, table: pd.DataFrame) -> None:
    images = lesion_images(phantom, table)
    frame = evaluate({"simple_cnn": trained}, images, methods=["saliency", "integrated_gradients", "grad_cam"],
                     sanity_images=6).set_index("method")
    random_pointing_score = frame["random_pointing"].iloc[0]
    best = frame.loc[["saliency", "integrated_gradients"], "pointing_game"].max()
    assert best > random_pointing_score + 0.05 and best > 3 * random_pointing_score, frame
    for method in ("saliency", "integrated_gradients"):
        assert frame.loc[method, "mass_in_mask"] > frame.loc[method, "random_mass"], frame
    # model randomisation changes the gradient and Grad-CAM maps of the trained model
    for method in ("saliency", "grad_cam"):
        assert frame.loc[method, "sanity_similarity"] < SANITY_THRESHOLD, frame
        assert not frame.loc[method, "sanity_flag"]


@pytest.mark.slow
def test_cli_on_a_real_search(tmp_path: Path) -> None:
    """End to end: automl.search writes a study, the CLI scores it."""
    search = pytest.importorskip("automl.search")
    config = search.SearchConfig(preset="smoke", models=("simple_cnn",), n_trials=1, leaderboards=str(tmp_path),
                                 study="attr", phantom_label_level="slice", leakage_audit="none")
    study = search.run_search(config)
    assert main(["--study", study.name, "--leaderboards", str(tmp_path), "--methods", "grad_cam",
                 "--max-images", "4", "--sanity-images", "2"]) == 0
    frame = pd.read_csv(study / "attribution.csv")
    assert frame["model"].tolist() == ["simple_cnn"] and frame["n"].iloc[0] >= 1
