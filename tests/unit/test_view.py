"""MLflow's saved view of the named runs (chargpt/tracking/view.py): which params it shows."""

import math

import pandas as pd

from chargpt.tracking.view import SUMMARY_METRICS, models_path, varied_params, view_path


def test_every_param_that_differs_is_shown_including_one_only_some_runs_set():
    latest = pd.DataFrame(
        {
            "params.model.n_layer": ["4", "4"],  # the same: left out
            "params.optimizer.name": ["muon", "adamw"],
            "params.eval.dynamic.lr": ["0.03", math.nan],  # one run evaluates dynamically, the other does not
            "params.data.url": ["a", "b"],  # the corpus: not a recipe
        }
    )
    assert varied_params(latest) == ["eval.dynamic.lr", "optimizer.name"]


def test_the_view_shows_bpc_static_and_dynamic_accuracy_and_iterations_and_links_each_screen():
    assert {"val_bpc", "test_bpc", "val_bpc_dynamic", "test_bpc_dynamic", "val_accuracy", "test_accuracy",
            "iterations"} <= set(SUMMARY_METRICS)  # fmt: skip
    assert view_path("7").startswith("/#/experiments/7/runs?viewStateShareKey=compare")
    assert "workflowType=machine_learning" in models_path("7")
