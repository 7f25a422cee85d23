"""CHARGPT_TRACKING=off records through a NullRun: a real null object, with every method a RecordedRun has."""

from chargpt.tracking import record


def test_the_null_run_has_every_method_of_the_recorded_run_with_the_same_arguments():
    assert record.missing_from_null_run() == []


def test_a_method_added_to_the_recorded_run_alone_is_found(monkeypatch):
    monkeypatch.setattr(record.RecordedRun, "log_dataset", lambda self, path: None, raising=False)
    monkeypatch.setattr(record.RecordedRun, "log_params", lambda self, params, nested: None)
    assert record.missing_from_null_run() == ["log_dataset", "log_params"]


def test_the_null_run_records_nothing_and_answers_as_a_run_does(tmp_path):
    with record.NullRun() as run:
        run.log_params({"a": 1})
        run.log_metrics({"val_bpc": 2.0}, step=3)
        run.step_logger()(3, {"train_loss": 1.0})
        assert run.log_model({}) == "" and run.model_id() == "" and run.run_id is None
        run.end("KILLED", {"failure": "x"})
    assert list(tmp_path.iterdir()) == []
