"""Random mutations of the real params.yaml: each loads, or raises ConfigError naming the problem; never anything
else."""

import copy
import functools
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chargpt.errors import ConfigError
from chargpt.pipeline.config import load_all_runs

BASE = yaml.safe_load((REPO / "params.yaml").read_text())


def key_paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from key_paths(value, (*prefix, key))


PATHS = [p for p in key_paths(BASE) if p]
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.lists(st.integers(-3, 3), max_size=4),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)
MUTATIONS = st.tuples(
    st.sampled_from(["replace", "delete", "add"]), st.sampled_from(PATHS), VALUES, st.text(min_size=1, max_size=6)
)


def mutate(params: dict, mutation) -> dict:
    kind, path, value, new_key = mutation
    params = copy.deepcopy(params)
    *parents, last = path
    node = params
    for key in parents:
        node = node[key]
    if kind == "replace":
        node[last] = value
    elif kind == "delete":
        del node[last]
    elif isinstance(node[last], dict):
        node[last][new_key] = value
    return params


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutations=st.lists(MUTATIONS, min_size=1, max_size=3))
def test_every_mutation_loads_or_raises_config_error(tmp_path_factory, mutations):
    params = BASE
    for m in mutations:
        try:
            params = mutate(params, m)
        except (KeyError, TypeError):  # an earlier mutation removed or replaced the parent
            pass
    path = Path(tmp_path_factory.mktemp("p")) / "params.yaml"
    path.write_text(yaml.dump(params, Dumper=yaml.CSafeDumper))  # libyaml's: 5x as fast as safe_dump
    try:
        load_all_runs(path)
    except ConfigError as e:
        assert str(path) in str(e)  # the message names the file, and the key path after it


def value_at(path: tuple):
    return functools.reduce(lambda node, key: node[key], path, BASE)


# Every setting params.yaml writes as one value (grids name their values their own way: tests/unit/test_config.py)
SETTINGS = [p for p in PATHS if p[0] != "grids" and not isinstance(value_at(p), dict | list)]


def test_a_setting_of_the_wrong_type_is_refused_naming_the_key_path_it_is_written_at(tmp_path):
    """Each setting in turn replaced by a mapping that no setting takes: the error names that key path."""
    assert len(SETTINGS) > 100
    for path in SETTINGS:
        params = mutate(BASE, ("replace", path, {"bad": 1}, ""))
        file = tmp_path / "params.yaml"
        file.write_text(yaml.dump(params, Dumper=yaml.CSafeDumper))
        with pytest.raises(ConfigError) as e:
            load_all_runs(file)
        dotted = ".".join(map(str, path))  # the key, or one under it where the setting may be a mapping (eval.dynamic)
        assert f"{dotted}: " in str(e.value) or f"{dotted}.bad: unknown key" in str(e.value), (path, str(e.value))
