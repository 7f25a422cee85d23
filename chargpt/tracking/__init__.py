"""Reporting, which no result depends on: the MLflow store (store), the comparison table (compare), MLflow's saved
view and `chargpt ui` (view), the MLflow app it serves (ui_app), and PNG plots (plots). Stages call it; nothing
under data, model, train, evaluation or pipeline imports it (an import contract in pyproject.toml), so dvc.yaml
lists none of it as a stage's dep."""
