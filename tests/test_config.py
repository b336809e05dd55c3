import copy

import pytest
import yaml

from cxrbench import config


def test_default_params_validate(params):
    assert params["scale"] == "demo"
    assert params["matrix"]["fractions"] == [1, 10, 100]


@pytest.mark.parametrize(
    "path, value, key",
    [
        (("pretrain", "engine", "lr"), -1.0, "pretrain.engine.lr"),
        (("data", "split_protocol"), "random", "data.split_protocol"),
        (("matrix", "fractions"), [0, 10], "matrix.fractions.0"),
        (("evaluate", "tasks", "linear", "datasets"), "rsna", "evaluate.tasks.linear.datasets"),
        (("precision",), "fp16", "precision"),
        (("pretrain", "methods", "g2d", "variant"), "released", "pretrain.methods.g2d.variant"),
    ],
)
def test_bad_value_names_the_key(params, path, value, key):
    bad = copy.deepcopy(params)
    node = bad
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    with pytest.raises(config.ParamsError, match=f"key '{key}'"):
        config.validate_params(bad)


def test_unknown_top_level_key_is_rejected(params):
    bad = {**params, "metrix": {}}
    with pytest.raises(config.ParamsError, match="metrix"):
        config.validate_params(bad)


def test_matrix_names_need_sections(params):
    bad = copy.deepcopy(params)
    bad["matrix"]["methods"].append("mgca")
    with pytest.raises(config.ParamsError, match="'pretrain.methods.mgca' is missing"):
        config.validate_params(bad)
    bad = copy.deepcopy(params)
    bad["evaluate"]["tasks"]["linear"]["datasets"].append("padchest")
    with pytest.raises(config.ParamsError, match="names 'padchest', not in 'data.datasets'"):
        config.validate_params(bad)


def test_overrides_parse_yaml_values(tmp_path, root):
    path = tmp_path / "p.yaml"
    path.write_text((root / "params.yaml").read_text())
    p = config.load_params(path, ["matrix.seeds=[0, 1, 2]", "pretrain.engine.lr=0.001"])
    assert p["matrix"]["seeds"] == [0, 1, 2]
    assert p["pretrain"]["engine"]["lr"] == pytest.approx(1e-3)
    with pytest.raises(config.ParamsError, match="'nope.x' does not exist"):
        config.load_params(path, ["nope.x=1"])


def test_merge_is_deep_and_pure():
    base = {"a": {"b": 1, "c": [1]}, "d": 1}
    out = config.merge(base, {"a": {"b": 2}, "e": 3})
    assert out == {"a": {"b": 2, "c": [1]}, "d": 1, "e": 3}
    assert base == {"a": {"b": 1, "c": [1]}, "d": 1}


def test_method_params_merge_engine_defaults(params):
    p = config.method_params(params, "raddino")
    assert p["engine"]["lr"] == pytest.approx(params["pretrain"]["methods"]["raddino"]["engine"]["lr"])
    assert p["engine"]["batch_size"] == params["pretrain"]["engine"]["batch_size"]
    assert p["engine"]["precision"] == params["pretrain"]["engine"].get("precision", params["precision"])


def test_task_params_keep_task_overrides(params):
    p = config.task_params(params, "segmentation")
    assert p["engine"]["weight_decay"] == pytest.approx(0.05)  # the task's own value
    assert p["engine"]["batch_size"] == params["evaluate"]["engine"]["batch_size"]  # the shared default
    assert "datasets" in p and p["datasets"] == params["evaluate"]["tasks"]["segmentation"]["datasets"]


@pytest.mark.parametrize("name", ["ci.yaml", "paper.yaml"])
def test_bundled_parameter_sets_validate(root, params, name):
    """As ``use-params`` applies them: a complete set replaces params.yaml, an overlay is merged over it."""
    overlay = yaml.safe_load((root / "workflow" / "params" / name).read_text())
    complete = set(config.schema()["required"]) <= set(overlay)
    config.validate_params(overlay if complete else config.merge(params, overlay), source=name)


def test_load_params_lists_every_problem(tmp_path, root):
    text = (root / "params.yaml").read_text().replace("scale: demo", "scale: dem", 1)
    text = text.replace("\nseed: 0", "\nseed: -1", 1)
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(config.ParamsError) as info:
        config.load_params(path)
    assert info.value.lines == [f"{path}: key 'scale': 'dem' is not one of ['demo', 'paper', 'ci', 'custom']",
                                f"{path}: key 'seed': -1 is less than the minimum of 0"]


def test_validate_params_rereads_files_strictly(tmp_path, root, params):
    """What Snakemake's own reader let through (it keeps the last of two equal keys): validate_params(files=...)."""
    path = tmp_path / "params.yaml"
    path.write_text((root / "params.yaml").read_text() + "seed: 3\n")
    line = len(path.read_text().splitlines())
    with pytest.raises(config.ParamsError) as info:
        config.validate_params(params, source="Snakemake config", files=[str(path)])
    assert info.value.lines == [f"{path}:{line}:1: duplicate key 'seed' (first at line 6)"]
