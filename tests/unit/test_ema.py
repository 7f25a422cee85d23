"""train.ema_decay: an exponential moving average of the weights, probed and saved in place of the last step's."""

from pathlib import Path

import pytest
import torch
from test_trainer import tiny_training_run

from chargpt.errors import ConfigError
from chargpt.train.checkpoint import restore_training_state
from chargpt.train.loop import LoopState, train_loop
from chargpt.train.run import RunHooks

SECTIONS = {"train": {"iterations": 12, "log_interval": 4, "eval_interval": 4, "ema_decay": 0.75}}


def build(tmp_path, **sections):
    torch.manual_seed(0)
    return tiny_training_run(tmp_path, **(sections or SECTIONS))


def test_the_average_follows_each_step_with_its_decay(tmp_path):
    run = build(tmp_path)
    after_each_step = []
    hooks = RunHooks(run, recording=False)
    hooks.after_step = lambda done: (run.after_step(), after_each_step.append(
        [p.detach().clone() for p in run.model.parameters()]))  # fmt: skip
    train_loop(run.parts(), run.loop_config(), hooks)
    assert len(after_each_step) == 12
    # by hand: the first step's weights, then average = 0.75 average + 0.25 weights after every later step
    average = after_each_step[0]
    for weights in after_each_step[1:]:
        average = [0.75 * a + 0.25 * w for a, w in zip(average, weights, strict=True)]
    for a, b in zip(run.final_model.parameters(), average, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert not all(torch.equal(a, b) for a, b in zip(run.final_model.parameters(), run.model.parameters()))


def test_the_probe_scores_the_average(tmp_path):
    run = build(tmp_path)
    train_loop(run.parts(), run.loop_config(), RunHooks(run, recording=False))
    probed = run.probe()["val_probe_bpc"]
    run.ema = None  # the last step's weights score otherwise
    assert run.final_model is run.model and run.probe()["val_probe_bpc"] != probed


def test_without_a_decay_there_is_no_average(tmp_path):
    run = build(tmp_path, train={"iterations": 12})
    assert run.ema is None and run.final_model is run.model and run.state_parts["ema"] is None


def test_a_decay_outside_zero_to_one_is_refused_naming_its_key(tmp_path, params):
    import yaml

    from chargpt.pipeline.config import load_run_config

    del params["grids"]
    for decay, expected in ((0.0, "greater than 0"), (1.0, "less than 1"), ("fast", "a valid number")):
        params["runs"] = {"t": {"train": {"ema_decay": decay}}}
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
        with pytest.raises(ConfigError, match=rf"runs\.t\.train\.ema_decay: Input should be {expected}"):
            load_run_config("t", tmp_path / "params.yaml")


def test_a_resumed_run_continues_its_average_bit_for_bit(tmp_path):
    plain = build(tmp_path)
    train_loop(plain.parts(), plain.loop_config(), RunHooks(plain, recording=False))

    broken, state_path = build(tmp_path), tmp_path / "state.pt"
    cfg = broken.loop_config()
    cfg.checkpoint_every = 5  # saved at step 5 only: the run "breaks" after it
    hooks = RunHooks(broken, recording=False, state_path=state_path)
    hooks.on_checkpoint = lambda state: RunHooks.on_checkpoint(hooks, state) if state.step == 5 else None
    train_loop(broken.parts(), cfg, hooks)

    resumed = build(tmp_path)
    saved = restore_training_state(state_path, **resumed.state_parts)
    assert int(saved["ema"]["n_averaged"]) == 5
    train_loop(resumed.parts(), resumed.loop_config(), RunHooks(resumed, recording=False), LoopState(**saved["loop"]))
    for a, b in zip(plain.ema.state_dict().values(), resumed.ema.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_the_train_stage_saves_the_average(tmp_path, monkeypatch):
    """stages/train.py's model.pt holds the average's weights, not the last step's."""
    from conftest import REPO, tiny_text

    from chargpt.data.corpus import split_corpus
    from chargpt.io import write_json
    from chargpt.pipeline.config import RunConfig
    from chargpt.train.checkpoint import load_model

    monkeypatch.syspath_prepend(str(REPO))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CHARGPT_TRACKING", "off")
    (tmp_path / "corpus").write_bytes(tiny_text(20_000))
    write_json(
        Path("data/processed/meta.json"), split_corpus(tmp_path / "corpus", Path("data/processed"), (0.9, 0.05, 0.05))
    )
    import stages.train

    model = {"n_layer": 2, "d_model": 16, "n_head": 2, "d_ff": 32, "context": 16}
    train = {"iterations": 12, "batch_size": 2, "eval_batches": 1, "eval_interval": 12, "log_interval": 4}
    cfg = RunConfig(name="t", model=model, schedule={"lr_max": 1e-2}, train=train | {"ema_decay": 0.75})
    run, _ = stages.train.train(cfg)
    saved, _ = load_model("models/t/model.pt")
    for name, weight in saved.state_dict().items():
        assert torch.equal(weight, run.ema.module.state_dict()[name]), name
    assert not torch.equal(saved.head.weight, run.model.head.weight)
