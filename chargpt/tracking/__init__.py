"""Reporting, which no result depends on: the MLflow store (store), the comparison table (compare), MLflow's saved
view and `chargpt ui` (view), the MLflow app it serves (ui_app), and PNG plots (plots). Stages call it; nothing
under data, model, train, evaluation or pipeline imports it (an import contract in pyproject.toml), so dvc.yaml
lists none of it as a stage's dep."""

import importlib.util
import sys
import types


def lazy_import(name: str) -> types.ModuleType:
    """Module `name`, executed on its first attribute access (importlib's LazyLoader): a stage run with tracking off
    (CHARGPT_TRACKING=off) never pays for importing MLflow, SQLAlchemy or pandas."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    spec.loader = importlib.util.LazyLoader(spec.loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
