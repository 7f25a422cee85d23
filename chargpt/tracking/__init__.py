"""Reporting, which no result depends on: the MLflow store (store), the comparison table (compare), MLflow's saved
view and `chargpt ui` (view), the MLflow app it serves (ui_app), and PNG plots (plots). Stages call it; nothing
under data, model, train, evaluation or pipeline imports it (an import contract in pyproject.toml), so dvc.yaml
lists none of it as a stage's dep."""

import importlib
import sys
import types


class LazyModule:
    """Module `name`, imported on its first attribute access: a stage run with tracking off (CHARGPT_TRACKING=off)
    never pays for importing MLflow, SQLAlchemy or pandas. A stand-in of its own, not a module in sys.modules, which
    other code scans: importing torch._dynamo (the first optimizer built does) reads an attribute of every module
    there, and would import a lazily loaded one on the spot."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str):
        return getattr(importlib.import_module(self._name), attr)


def lazy_import(name: str) -> types.ModuleType | LazyModule:
    """`name` itself where it is already imported, else a LazyModule of it."""
    return sys.modules.get(name) or LazyModule(name)
