import json

import yaml

from chargpt.dvc_plots import MARKER, render
from conftest import REPO


def test_the_overlay_plots_list_exactly_the_runs_of_params_yaml():
    runs = list(yaml.safe_load((REPO / "params.yaml").read_text())["runs"])
    current = (REPO / "dvc.yaml").read_text()
    assert current == render(current, runs), "dvc.yaml is out of date: run `chargpt sync-plots`"
    plots = {k: v for item in yaml.safe_load(current)["plots"] for k, v in item.items()}
    assert set(plots) == {"val_bpc", "train_loss", "lr_range_test"}
    assert list(plots["val_bpc"]["y"]) == [f"reports/{run}/train_curve.tsv" for run in runs]
    assert plots["lr_range_test"]["template"] == "lr_range_log" and plots["lr_range_test"]["x"] == "lr"


def test_sync_rewrites_only_below_the_marker():
    head = "stages:\n  a:\n    cmd: echo  # a comment kept as it is\n"
    first = render(head, ["x"])
    assert first.startswith(head) and MARKER in first and "reports/x/train_curve.tsv" in first
    second = render(first, ["x", "y"])
    assert second.startswith(head) and second.count(MARKER) == 1 and "reports/y/lr_range_test.csv" in second


def test_shipped_templates_are_vega_lite_with_the_anchors_dvc_fills():
    for name in ("runs_overlay", "lr_range_log"):
        text = (REPO / ".dvc/plots" / f"{name}.json").read_text()
        spec = json.loads(text)
        assert spec["$schema"].startswith("https://vega.github.io/schema/vega-lite/")
        assert spec["data"] == {"values": "<DVC_METRIC_DATA>"}
        assert "<DVC_METRIC_X>" in text and "<DVC_METRIC_Y>" in text
    log_x = json.loads((REPO / ".dvc/plots/lr_range_log.json").read_text())["layer"][0]["encoding"]["x"]
    assert log_x["scale"]["type"] == "log"
