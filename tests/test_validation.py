"""``validate`` rejects every parameter file that cannot run, naming each key, all problems at once; the per-name
schema files stay in step with the registries and with the keys the code reads."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import json
import re
from pathlib import Path

import pytest
import yaml

from cxrbench import config, validation, yamlio


def _set(params: dict, dotted: str, value) -> dict:
    """A deep copy of ``params`` with ``dotted`` set to ``value`` (parents created)."""
    out = copy.deepcopy(params)
    node = out
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return out


def _lines(params: dict) -> list[str]:
    with pytest.raises(config.ParamsError) as info:
        config.validate_params(params, source="p.yaml")
    return info.value.lines


def _rejects(params: dict, key: str, *words: str) -> str:
    """The one problem line naming ``key`` (asserting it exists and mentions ``words``)."""
    hits = [line for line in _lines(params) if f"key '{key}'" in line]
    assert hits, f"no problem names {key!r}: {_lines(params)}"
    for word in words:
        assert word in hits[0], hits[0]
    return hits[0]


# ------------------------------------------------------------------------------------------------ the probes


def test_typo_in_a_method_section(params):
    bad = _set(params, "pretrain.methods.g2d.temprature", 0.1)
    _rejects(bad, "pretrain.methods.g2d.temprature", "unknown key", "did you mean 'temperature'")


def test_typo_nested_in_a_method_section(params):
    bad = _set(params, "pretrain.methods.g2d.pseudo_mask.percentil", 50)
    _rejects(bad, "pretrain.methods.g2d.pseudo_mask.percentil", "unknown key", "'percentile'")


def test_typo_in_a_task_section(params):
    bad = _set(params, "evaluate.tasks.linear.crop_ration", 0.9)
    _rejects(bad, "evaluate.tasks.linear.crop_ration", "unknown key", "'crop_ratio'")


def test_typo_in_a_per_dataset_override(params):
    bad = _set(params, "evaluate.tasks.detection.by_dataset.rsna.max_boxs", 5)
    _rejects(bad, "evaluate.tasks.detection.by_dataset.rsna.max_boxs", "unknown key", "'max_boxes'")


def test_misspelled_backbone(params):
    bad = _set(params, "pretrain.methods.g2d.backbone", "resnet181")
    _rejects(bad, "pretrain.methods.g2d.backbone", "not a registered backbone", "'resnet18'")


def test_unknown_backbone_kwarg(params):
    bad = _set(params, "pretrain.methods.raddino.backbone_kwargs.img_sise", 64)
    _rejects(bad, "pretrain.methods.raddino.backbone_kwargs.img_sise", "backbone vit_tiny_patch16", "'img_size'")


def test_unregistered_method_with_a_section(params):
    bad = _set(params, "pretrain.methods.mgca", {"backbone": "resnet18", "image_size": 64})
    bad["matrix"]["methods"].append("mgca")
    _rejects(bad, "pretrain.methods.mgca", "not a registered method", "method: <name>")


def test_unregistered_task_with_a_section(params):
    bad = _set(params, "evaluate.tasks.retrieval", {"datasets": ["rsna"]})
    bad["matrix"]["tasks"].append("retrieval")
    _rejects(bad, "evaluate.tasks.retrieval", "not a registered task")


def test_unregistered_dataset_with_a_section(params):
    bad = _set(params, "data.datasets.padchest", {"raw": "data/raw/padchest"})
    _rejects(bad, "data.datasets.padchest", "not a registered dataset")


def test_task_on_a_dataset_it_does_not_support(params):
    bad = _set(params, "evaluate.tasks.linear.datasets", ["chexpert", "nih"])
    _rejects(bad, "evaluate.tasks.linear.datasets", "does not run on dataset 'nih'", "chexpert")


def test_encoder_input_larger_than_a_store_it_reads(params):
    bad = _set(_set(params, "pretrain.methods.g2d.image_size", 96), "data.datasets.rsna.image_size", 80)
    line = _rejects(bad, "pretrain.methods.g2d.image_size", "96 px", "64 px: chexpert, covidx", "80 px: rsna",
                    "expected at most 64")
    assert "mimic" in line.split("80 px")[0]  # the pretraining corpus is a store the method reads too
    fits = _set(_set(params, "data.image_size", 96), "pretrain.methods.g2d.image_size", 96)
    config.validate_params(fits, source="p.yaml")  # a store of the method's size: nothing to upsample


def test_task_input_larger_than_its_store(params):
    bad = _set(params, "evaluate.tasks.segmentation.by_dataset", {"siim": {"image_size": 128}})
    _rejects(bad, "evaluate.tasks.segmentation.by_dataset.siim.image_size", "128 px", "siim (64 px)")
    bad = _set(params, "evaluate.tasks.linear.image_size", 72)
    lines = [line for line in _lines(bad) if "key 'evaluate.tasks.linear.image_size'" in line]
    assert len(lines) == 3 and all("72 px" in line for line in lines)  # chexpert, rsna and covidx: each named
    assert sorted(re.search(r"store of (\w+)", line).group(1) for line in lines) == ["chexpert", "covidx", "rsna"]


def test_matrix_fraction_never_prepared(params):
    bad = _set(params, "matrix.fractions", [1, 5, 100])
    _rejects(bad, "matrix.fractions", "fraction 5%", "never prepared")


def test_crop_ratio_zero(params):
    bad = _set(params, "evaluate.tasks.linear.crop_ratio", 0)
    _rejects(bad, "evaluate.tasks.linear.crop_ratio", "less than or equal to the minimum of 0")


def test_grad_accum_above_the_batches_of_a_pretraining_epoch(params):
    # demo: 500 synthetic MIMIC patients -> at most 1500 frontal images -> 46 full batches of 32
    bad = _set(params, "pretrain.engine.grad_accum", 64)
    _rejects(bad, "pretrain.engine.grad_accum", "at most 46 batches of 32", "synthetic.sizes.mimic")
    config.validate_params(_set(params, "pretrain.engine.grad_accum", 46))


def test_grad_accum_counts_the_batches_of_one_process(params):
    bad = _set(_set(params, "pretrain.engine.devices", 20), "pretrain.engine.grad_accum", 3)  # 1500 / (32 x 20)
    _rejects(bad, "pretrain.engine.grad_accum", "at most 2 batches of 32 on each of 20 processes")


def test_grad_accum_above_the_batches_of_a_task_epoch(params):
    # SIIM: 400 synthetic images; 1% -> at most max(4, 1 label x 20 min_positives) = 20 images = 1 batch of 32
    bad = _set(params, "evaluate.tasks.segmentation.engine.grad_accum", 2)
    line = _rejects(bad, "evaluate.tasks.segmentation.engine.grad_accum", "at most 1 batches of 32")
    assert "at 1%" in line


def test_grad_accum_against_the_published_split_sizes(root):
    paper = yamlio.load_file(root / "workflow" / "params" / "paper.yaml")
    bad = _set(paper, "pretrain.methods.raddino.engine.grad_accum", 10_000)
    config.validate_params(bad)  # MIMIC-CXR's size is not declared: checked at run start instead
    bad = _set(paper, "evaluate.tasks.finetune.engine.grad_accum", 14)  # NIH 1%: <= 779 images = 13 batches of 64
    _rejects(bad, "evaluate.tasks.finetune.engine.grad_accum", "at most 13 batches of 64", "published nih")


def test_fraction_bound_follows_the_stratified_floor(params):
    """1% of 500 NIH images is 5, but the demo's floor of 20 positives for each of 14 labels can hold up to 280."""
    assert validation.fraction_images(params, "nih", 500, 1) == 14 * params["data"]["min_positives"]
    assert validation.fraction_images(_set(params, "data.min_positives", 1), "nih", 500, 1) == 14
    assert validation.fraction_images(params, "nih", 500, 100) == 500


def test_monitor_no_task_reports(params):
    bad = _set(params, "evaluate.tasks.detection.engine.monitor", "val_loss")
    _rejects(bad, "evaluate.tasks.detection.engine.monitor", "'val_loss' is not a metric task detection", "val_mAP")
    bad = _set(params, "evaluate.engine.monitor", "val_auc")
    _rejects(bad, "evaluate.engine.monitor", "'val_auc'")


def test_freeze_layers_above_the_text_encoders_depth(params):
    whole = _set(params, "pretrain.methods.g2d.text.keep_layers", None)  # MiniLM's 6 layers
    bad = _set(whole, "pretrain.methods.g2d.text.freeze_layers", 7)
    _rejects(bad, "pretrain.methods.g2d.text.freeze_layers", "has 6", "'minilm'")
    config.validate_params(_set(whole, "pretrain.methods.g2d.text.freeze_layers", 6))
    # a truncated tower (keep_layers) is as deep as what it keeps, and cannot keep more than the model has
    kept = _set(params, "pretrain.methods.g2d.text.keep_layers", 2)
    _rejects(_set(kept, "pretrain.methods.g2d.text.freeze_layers", 3), "pretrain.methods.g2d.text.freeze_layers",
             "has 2")
    _rejects(_set(params, "pretrain.methods.g2d.text.keep_layers", 7), "pretrain.methods.g2d.text.keep_layers",
             "has 6")


def test_heads_that_do_not_divide_the_embedding(params):
    bad = _set(params, "pretrain.methods.g2d.heads", 3)  # AttentionPool: dim 128 is not divisible by heads 3
    _rejects(bad, "pretrain.methods.g2d.heads", "3 does not divide embed_dim = 128")


def test_encoder_inputs_a_multiple_of_the_patch(params):
    bad = _set(params, "pretrain.methods.raddino.crops.local_size", 30)  # vit_tiny_patch16
    _rejects(bad, "pretrain.methods.raddino.crops.local_size", "not a multiple of 16")
    # a downstream size reaches a ViT padded to its patch (models/backbones.py): valid
    config.validate_params(_set(params, "evaluate.tasks.linear.image_size", 56))


def test_derived_method_entry_is_checked_against_its_registered_method(params):
    good = _set(params, "pretrain.methods.g2d_median", {**params["pretrain"]["methods"]["g2d"], "method": "g2d",
                                                        "pseudo_mask": {"percentile": 50.0}})
    config.validate_params(good)
    bad = _set(good, "pretrain.methods.g2d_median.pseudo_mask.percentle", 50.0)
    _rejects(bad, "pretrain.methods.g2d_median.pseudo_mask.percentle", "method g2d")
    bad = _set(good, "pretrain.methods.g2d_median.method", "g2dd")
    _rejects(bad, "pretrain.methods.g2d_median.method", "'g2dd' is not a registered method", "'g2d'")


def test_the_section_as_resolved_with_its_preset_is_checked(params):
    """The code preset brings Bio_ClinicalBERT's freeze_layers 9; with the user's 6-layer MiniLM the run would fail."""
    bad = _set(params, "pretrain.methods.g2d.text", {"name_or_path": "minilm", "max_length": 64})
    bad = _set(bad, "pretrain.methods.g2d.variant", "code")
    _rejects(bad, "pretrain.methods.g2d.text.freeze_layers", "9 layers to freeze", "has 6")
    config.validate_params(_set(bad, "pretrain.methods.g2d.text.freeze_layers", 4))


def test_entries_derive_from_entries(params):
    chain = _set(params, "pretrain.methods.g2d_median", {"method": "g2d", "pseudo_mask": {"percentile": 50.0}})
    chain = _set(chain, "pretrain.methods.g2d_median_code", {"method": "g2d_median", "variant": "code"})
    config.validate_params(chain)  # g2d_median_code is G2D: checked against g2d's schema
    bad = _set(chain, "pretrain.methods.g2d_median_code.heads", 3)
    _rejects(bad, "pretrain.methods.g2d_median_code.heads", "3 does not divide embed_dim = 128")
    loop = _set(chain, "pretrain.methods.g2d_median.method", "g2d_median_code")
    _rejects(loop, "pretrain.methods.g2d_median.method", "cycle")


def test_a_variant_the_method_has_no_preset_for(params):
    bad = _set(params, "pretrain.methods.raddino.variant", "code")
    _rejects(bad, "pretrain.methods.raddino.variant", "no variant 'code'")


def test_all_problems_are_listed(params):
    bad = _set(params, "evaluate.tasks.linear.crop_ratio", 0)
    bad = _set(bad, "pretrain.methods.g2d.backbone", "resnet181")
    bad = _set(bad, "matrix.fractions", [1, 5, 100])
    lines = _lines(bad)
    assert len(lines) == 3, lines
    assert [ln.split("'")[1] for ln in lines] == ["evaluate.tasks.linear.crop_ratio", "matrix.fractions",
                                                 "pretrain.methods.g2d.backbone"]


def test_one_wrong_value_is_one_line(params):
    """Not echoed by every entry that resolves it, nor by the checks that read it, nor by two schemas."""
    assert _lines(_set(params, "pretrain.engine.lr", -1)) == [
        "p.yaml: key 'pretrain.engine.lr': -1 is less than or equal to the minimum of 0"]
    assert _lines(_set(params, "evaluate.tasks.linear.datasets", "rsna")) == [
        "p.yaml: key 'evaluate.tasks.linear.datasets': 'rsna' is not of type 'array'"]
    assert len(_lines(_set(params, "pretrain.methods.g2d.variant", "released"))) == 1


def test_cli_validate_prints_every_problem(tmp_path, root, params, capsys):
    from cxrbench import cli

    bad = _set(params, "evaluate.tasks.linear.crop_ratio", 0)
    bad = _set(bad, "pretrain.methods.g2d.temprature", 1)
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(bad))
    assert cli.main(["validate", "--params", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and err[-1].endswith("2 problems")
    assert all(line.startswith(f"{path}: key '") for line in err[:2])


# ------------------------------------------------------------------------------------------------ YAML


def test_duplicate_key_names_file_line_and_key(tmp_path, root):
    text = (root / "params.yaml").read_text().replace("    lr: 5.0e-4\n", "    lr: 5.0e-4\n    lr: 0.01\n", 1)
    path = tmp_path / "params.yaml"
    path.write_text(text)
    line = text.splitlines().index("    lr: 0.01") + 1
    first = line - 1
    with pytest.raises(config.ParamsError, match=rf"^{re.escape(str(path))}:{line}:5: duplicate key 'lr' "
                                                 rf"\(first at line {first}\)$"):
        config.load_params(path)


def test_syntax_error_names_file_line_and_column(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("scale: demo\npaths:\n  prepared: [data/prepared\n  runs: results\n")
    with pytest.raises(config.ParamsError, match=rf"^{re.escape(str(path))}:4:7: YAML syntax error: "):
        config.load_params(path)


def test_use_params_reads_strictly(tmp_path, root):
    from cxrbench import cli

    target = tmp_path / "params.yaml"
    target.write_text((root / "params.yaml").read_text())
    overlay = tmp_path / "o.yaml"
    overlay.write_text("seed: 1\nseed: 2\n")
    assert cli.main(["use-params", str(overlay), "--params", str(target)]) == 2
    assert target.read_text() == (root / "params.yaml").read_text()


# ------------------------------------------------------------------------------------------------ bundled files


def _bundled(root, params, name: str) -> dict:
    """A bundled set as ``use-params`` applies it: a complete set replaces params.yaml, an overlay merges over it."""
    overlay = yamlio.load_file(root / "workflow" / "params" / name)
    complete = set(config.schema()["required"]) <= set(overlay)
    return overlay if complete else config.merge(params, overlay)


def test_ci_set_is_valid(root, params):
    config.validate_params(_bundled(root, params, "ci.yaml"), source="ci.yaml")


def test_paper_set_is_valid(root, params):
    """Nothing may be wrong with the paper set (its 256 px NIH fine-tuning reaches RAD-DINO's ViT-B/14: the ViT
    zero-pads to the next multiple of its patch, models/backbones.py)."""
    config.validate_params(_bundled(root, params, "paper.yaml"), source="paper.yaml")


# ------------------------------------------------------------------------------------------------ schemas vs code


def _registries():
    from cxrbench.registry import BACKBONES, DATASETS, METHODS, TASKS

    return {"methods": METHODS, "tasks": TASKS, "datasets": DATASETS, "backbones": BACKBONES}


@pytest.mark.parametrize("kind", validation.KINDS)
def test_every_registered_name_has_a_schema_and_back(kind):
    assert list(validation.registered(kind)) == _registries()[kind].names()


def test_schema_declarations_match_the_registered_classes():
    regs = _registries()
    for name, cls in regs["tasks"].items():
        schema = validation.load_schema("tasks", name)
        assert tuple(schema["x-datasets"]) == tuple(cls.datasets), name
        assert schema["x-trains"] == cls.uses_fractions, name
    for name, cls in regs["datasets"].items():
        schema = validation.load_schema("datasets", name)
        sizes = cls.paper_split_sizes
        assert schema["x-paper-split-sizes"] == (list(sizes) if sizes else None), name
        assert schema["x-has-text"] == cls.has_text, name
        assert schema["x-labels"] == len(cls.label_names), name
    for name, cls in regs["methods"].items():
        assert validation.load_schema("methods", name)["x-trains"] == cls({}).trains(), name


def test_engine_schema_is_the_engine_config():
    from cxrbench.engine.config import EngineConfig

    engine = config.schema()["$defs"]["engine"]["properties"]
    assert sorted(engine) == sorted(f.name for f in dataclasses.fields(EngineConfig))
    for key, spec in engine.items():
        for value in spec.get("enum", []):
            EngineConfig(**{key: value})  # every allowed value is accepted by the engine
        if "enum" in spec:
            with pytest.raises(ValueError, match=key):
                EngineConfig(**{key: "not-a-choice"})


def test_shared_value_schemas_are_the_code_s_fields():
    from cxrbench.methods._augment import MultiCropConfig, ViewConfig
    from cxrbench.models.text import build_text_encoder

    defs = config.schema()["$defs"]
    assert sorted(defs["augment"]["properties"]) == sorted(f.name for f in dataclasses.fields(ViewConfig) if
                                                           f.name != "size")
    crops = validation.load_schema("methods", "raddino")["properties"]["crops"]["properties"]
    assert sorted(crops) == sorted(f.name for f in dataclasses.fields(MultiCropConfig))
    kwargs = set(inspect.signature(build_text_encoder).parameters) - {"corpus"}
    assert set(defs["text"]["properties"]) == kwargs


def test_text_depths_are_the_encoders():
    from cxrbench.models.text import build_text_encoder, minilm_dir

    minilm = json.loads((Path(minilm_dir()) / "config.json").read_text())["num_hidden_layers"]
    assert validation.text_depth({"name_or_path": "minilm"}) == minilm
    default = inspect.signature(build_text_encoder).parameters["num_layers"].default
    assert validation.text_depth({"name_or_path": "wordpiece-bert"}) == default
    assert validation.text_depth({"name_or_path": "wordpiece-bert", "num_layers": 5}) == 5


_READS = re.compile(r"""\b(?:p|params|self\.params|self\.p)(?:\.get\(|\[)\s*["'](\w+)["']|require\(p, ["'](\w+)""")
_OPTIONS = re.compile(r"""options(?:\.get\(|\[)\s*["'](\w+)["']""")
#: keys the stages add to a section themselves (not user parameters)
_INJECTED = {"seed", "_name", "cache_dir", "max_boxes_default"}


def _module_keys(cls, pattern) -> set[str]:
    text = Path(inspect.getsourcefile(cls)).read_text()
    return {a or b for a, b in pattern.findall(text)} if pattern.groups == 2 else set(pattern.findall(text))


@pytest.mark.parametrize("kind", ["methods", "tasks"])
def test_every_key_the_code_reads_is_in_a_schema(kind):
    """A key a method or task module reads (``p.get("x")``, ``params["x"]``, ``require(p, "x")``) is declared by
    the schema of a name registered from that module, so a new parameter cannot bypass validation."""
    by_module: dict[str, set[str]] = {}
    for name, cls in _registries()[kind].items():
        props = set(validation.load_schema(kind, name)["properties"])
        by_module.setdefault(inspect.getsourcefile(cls), set()).update(props)
    for name, cls in _registries()[kind].items():
        read = _module_keys(cls, _READS) - _INJECTED
        missing = read - by_module[inspect.getsourcefile(cls)]
        assert not missing, f"{kind}/{name}: {sorted(missing)} read by the code, not in its schema"


def test_every_option_a_reader_reads_is_in_its_schema():
    for name, cls in _registries()["datasets"].items():
        options = set(validation.load_schema("datasets", name)["properties"]["options"]["properties"])
        missing = _module_keys(cls, _OPTIONS) - options
        assert not missing, f"datasets/{name}: options {sorted(missing)} not in its schema"


def test_paper_scale_with_the_synthetic_stand_in_is_refused(root, params):
    paper = _bundled(root, params, "paper.yaml")
    _rejects(_set(paper, "synthetic.enabled", True), "synthetic.enabled", "real downloads")
    config.validate_params(_set(params, "scale", "custom"))  # synthetic data at another scale: fine
