"""Two DVC experiments at once (dvc queue, 2 workers) against the default SQLite MLflow store."""

import time

from conftest import TINY_RUN, make_project, run, tiny_text


def queue_statuses(root) -> list[str]:
    """Each queued experiment's status, as `dvc queue status` lists them (its API, in this process: a `dvc` process
    costs a second of the CPU the two experiments share)."""
    import contextlib

    from dvc.repo import Repo

    with contextlib.chdir(root), Repo(str(root)) as repo:
        return [entry["status"] for entry in repo.experiments.celery_queue.status()]


def test_two_queued_experiments_are_both_recorded_completely(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(tiny_text(60_000))
    root, env = make_project(tmp_path / "project", {"tiny": TINY_RUN}, {"url": corpus.as_uri(), "checksums": None})
    # committed: both experiments start from the same splits and range test, and train and evaluate side by side
    run(["dvc", "repro", "lr_range_test@tiny"], root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "preprocessed"], root, env)
    for seed in (1, 2):
        run(["dvc", "exp", "run", "--queue", "-S", f"+runs.tiny.train.seed={seed}", "evaluate@tiny"], root, env)
    run(["dvc", "queue", "start", "-j", "2"], root, env)
    deadline = time.time() + 300
    while {"Running", "Queued"} & set(statuses := queue_statuses(root)):
        assert time.time() < deadline, statuses
        time.sleep(2)
    status = run(["dvc", "queue", "status"], root, env).stdout  # as a user reads it
    failed = [line.split()[0] for line in status.splitlines() if "Failed" in line]
    logs = "".join(run(["dvc", "queue", "logs", task], root, env, False).stdout[-4000:] for task in failed)
    assert status.count("Success") == 2, status + logs

    from mlflow.tracking import MlflowClient

    client = MlflowClient(
        tracking_uri=f"sqlite:///{root / 'mlflow.db'}"
    )  # the store at the repo root, not the temp copies
    runs = client.search_runs(
        [client.get_experiment_by_name("chargpt").experiment_id], filter_string="attributes.run_name = 'tiny'"
    )
    assert sorted(r.data.params["train.seed"] for r in runs) == ["1", "2"]
    for r in runs:
        assert r.info.status == "FINISHED" and "test_bpc" in r.data.metrics
        assert [m.step for m in client.get_metric_history(r.info.run_id, "train_loss")] == [5, 10, 15, 20, 25, 30]
