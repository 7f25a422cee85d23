"""Random mutations of the real params.yaml: each loads, or raises ConfigError naming the problem; never anything
else."""

import copy
from pathlib import Path

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
    path.write_text(yaml.safe_dump(params))
    try:
        load_all_runs(path)
    except ConfigError as e:
        assert str(path) in str(e)  # the message names the file, and the key path after it
