"""Method recipes as presets (issue 9): a variant selects the whole recipe, explicit values win, the resolved config
says what was used; the paper parameter set stands on its own (no demo value survives the switch)."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cxrbench import config, presets

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "workflow" / "params" / "paper.yaml"


def with_section(params: dict, entry: str, section: dict) -> dict:
    out = copy.deepcopy(params)
    out["pretrain"]["methods"][entry] = section
    return out


def test_g2d_code_variant_alone_is_the_released_recipe(params):
    """`variant: code` and nothing else: every value the issue lists, from the released code."""
    paper = yaml.safe_load(PAPER.read_text())
    r = config.method_params(with_section(paper, "g2d", {"variant": "code"}), "g2d")
    assert r["seg_loss"] == {"dice_on_logits": True, "dice_smooth": 1e-5, "dice_weight": 1.0, "bce_weight": 0.2}
    assert r["pseudo_mask"] == {"percentile": 85.0, "aggregate": "mean", "body_mask": False, "smooth": False,
                                "inclusive": False}
    assert r["warmup_global_steps"] == 200 and r["infonce_reduction"] == "sum" and r["gather_negatives"] is False
    assert r["image_size"] == 256 and r["normalize"] == {"mean": 0.449, "std": 0.226}
    assert r["augment"] == {"degrees": 15.0, "shear": 15.0, "brightness": 0.2, "contrast": 0.2}
    e = r["engine"]
    assert (e["optimizer"], e["lr"], e["batch_size"], e["schedule"], e["restart_every"]) == \
        ("adamw", 2e-5, 64, "cosine_restarts", 200)
    assert r["preset"] == {"name": "g2d/code", "overridden": []}


def test_paper_variant_is_the_default_and_differs_where_the_paper_does(params):
    paper = yaml.safe_load(PAPER.read_text())
    r = config.method_params(with_section(paper, "g2d", {}), "g2d")
    assert r["variant"] == "paper"
    assert r["seg_loss"]["dice_on_logits"] is False and r["seg_loss"]["bce_weight"] == 0.5
    assert r["pseudo_mask"]["body_mask"] is True and r["pseudo_mask"]["inclusive"] is True
    assert r["warmup_global_steps"] == 0 and r["engine"]["lr"] == 2e-4 and r["image_size"] == 224


def test_explicit_user_value_wins_and_is_recorded(params):
    paper = yaml.safe_load(PAPER.read_text())
    section = {"variant": "code", "pseudo_mask": {"percentile": 75.0}, "engine": {"lr": 1e-4}}
    r = config.method_params(with_section(paper, "g2d", section), "g2d")
    assert r["pseudo_mask"]["percentile"] == 75.0 and r["pseudo_mask"]["inclusive"] is False  # rest of the recipe
    assert r["engine"]["lr"] == 1e-4
    assert r["preset"]["overridden"] == ["engine.lr", "pseudo_mask.percentile"]


def test_shared_engine_sits_between_recipe_and_section(params):
    paper = yaml.safe_load(PAPER.read_text())
    paper["pretrain"]["engine"]["epochs"] = 3
    r = config.method_params(with_section(paper, "mflag", {"engine": {"batch_size": 8}}), "mflag")
    assert r["engine"]["epochs"] == 3 and r["engine"]["batch_size"] == 8 and r["engine"]["lr"] == 2e-5


def test_mflag_variants_differ_in_the_gram_divisor(params):
    paper = yaml.safe_load(PAPER.read_text())
    code = config.method_params(with_section(paper, "mflag", {"variant": "code"}), "mflag")
    ref = config.method_params(with_section(paper, "mflag", {"variant": "paper"}), "mflag")
    assert code["orth_batch_size"] == 512 and ref["orth_batch_size"] is None
    assert {k: v for k, v in code.items() if k not in ("orth_batch_size", "preset", "variant")} == \
        {k: v for k, v in ref.items() if k not in ("orth_batch_size", "preset", "variant")}


def test_named_entry_derives_from_an_entry_or_a_registered_method(params):
    p = with_section(params, "g2d_median", {"method": "g2d", "pseudo_mask": {"percentile": 50.0}})
    r = config.method_params(p, "g2d_median")
    assert (r["name"], r["method"], r["variant"]) == ("g2d_median", "g2d", "paper")
    assert r["pseudo_mask"]["percentile"] == 50.0 and r["pseudo_mask"]["body_mask"] is True
    assert r["backbone"] == "resnet18" and r["image_size"] == 64  # the demo's g2d entry, inherited
    assert "pseudo_mask.percentile" in r["preset"]["overridden"]
    # a chain: g2d_median_code derives from g2d_median, and switches the recipe
    p = with_section(p, "g2d_median_code", {"method": "g2d_median", "variant": "code"})
    r = config.method_params(p, "g2d_median_code")
    assert (r["method"], r["variant"], r["pseudo_mask"]["percentile"]) == ("g2d", "code", 50.0)
    assert r["pseudo_mask"]["inclusive"] is False and r["backbone"] == "resnet18"
    # no entry of that name: the registered method's recipe alone
    paper = yaml.safe_load(PAPER.read_text())
    del paper["pretrain"]["methods"]["g2d"]
    r = config.method_params(with_section(paper, "g2d_x", {"method": "g2d"}), "g2d_x")
    assert r["backbone"] == "resnet50" and r["method"] == "g2d"


def test_derivation_cycle_is_an_error(params):
    p = with_section(params, "a", {"method": "b"})
    p = with_section(p, "b", {"method": "a"})
    with pytest.raises(config.ParamsError, match="cycle"):
        config.method_params(p, "a")


def test_unknown_variant_names_the_key_and_the_choices(params):
    with pytest.raises(config.ParamsError, match=r"pretrain\.methods\.raddino\.variant.*\['paper'\]"):
        config.method_params(with_section(params, "raddino", {"variant": "code"}), "raddino")


def test_hyperparameter_doc_is_generated_from_the_presets():
    doc = (ROOT / "docs" / "hyperparameters.md").read_text()
    assert presets.markdown_table() in doc, "docs/hyperparameters.md is stale: run `python -m cxrbench.presets`"


# ---- the paper set stands on its own -----------------------------------------------------------------------

#: demo values that the paper set may share, each with its reason (prefixes cover every key below them)
SHARED = {
    "seed": "the global seed 0 at both scales",
    "device": "auto picks the GPU where there is one, at both scales",
    "precision": "auto picks bf16 where native, at both scales",
    "paths": "the same directory layout at both scales",
    "synthetic": "the generator's own settings; it does not run at paper scale (synthetic.enabled is false)",
    "data.split_protocol": "the published (reference) splits at both scales",
    "data.fraction_seed": "the fraction draw's seed 0 at both scales",
    "data.fractions": "1 / 10 / 100% at both scales",
    "data.skip_bad": "strict by default at both scales",
    "data.max_skipped_fraction": "the same ceiling on lost images at both scales",
    "data.datasets.ms_cxr.needs": "MS-CXR images come from MIMIC-CXR at both scales",
    "pretrain.dataset": "MIMIC-CXR is the pretraining corpus at both scales",
    "pretrain.engine.grad_accum": "no gradient accumulation at either scale",
    "pretrain.engine.devices": "compared per method below: the demo's 1 is not the paper's 4",
    "pretrain.methods.g2d.variant": "the paper variant is the default at both scales",
    "pretrain.methods.convirt.variant": "the paper variant is the default at both scales",
    "pretrain.methods.mflag.variant": "the paper variant is the default at both scales",
    "pretrain.methods.external.checkpoint": "differs (null in the demo)",
    "evaluate.engine.weight_decay": "MGCA protocol wd 1e-6 at both scales",
    "evaluate.engine.schedule": "constant lr (MGCA protocol) at both scales",
    "evaluate.engine.progress": "no progress bars in job logs at both scales",
    "evaluate.tasks.linear.crop_ratio": "224 / 256 centre crop at both scales",
    "evaluate.tasks.segmentation.setting": "frozen encoder (MGCA protocol) at both scales",
    "evaluate.tasks.segmentation.focal_weight": "10 x focal - log Dice (MGCA protocol) at both scales",
    "evaluate.tasks.segmentation_ed.focal_weight": "10 x focal - log Dice (MGCA protocol) at both scales",
    "evaluate.tasks.detection.by_dataset": "at most 10 (RSNA) / 20 (Object-CXR) boxes per image at both scales",
    "evaluate.tasks.detection.datasets": "the published datasets at both scales",
    "evaluate.tasks.zeroshot": "no training: same datasets, prompts, fraction 100 and one seed at both scales",
    "evaluate.tasks.grounding": "no training: same datasets, threshold, fraction 100 and one seed at both scales",
    "evaluate.tasks.metadata.datasets": "the datasets whose tables carry sex and age (CheXpert, NIH) at both scales",
    "evaluate.tasks.metadata.seeds": "deterministic scikit-learn fits: one seed at both scales",
    "evaluate.tasks.metadata.crop_ratio": "the linear probe's 224 / 256 centre crop (its cached features), both scales",
    "evaluate.tasks.metadata.age_bins": "the same age groups (<40, 40-59, 60-79, >=80) at both scales",
    "evaluate.tasks.metadata.bootstrap.seed": "the bootstrap's seed 0 at both scales",
    "evaluate.tasks.report_generation.datasets": "MIMIC-CXR, the reports' corpus, at both scales",
    "evaluate.tasks.report_generation.split_source": "the official mimic-cxr-2.0.0-split.csv at both scales",
    "evaluate.tasks.report_generation.text_columns": "the store's IMPRESSION + FINDINGS at both scales",
    "evaluate.tasks.report_generation.image_tokens.level": "the last map (RAD-DINO: last patch tokens), both scales",
    "evaluate.tasks.linear.datasets": "the published datasets at both scales",
    "evaluate.tasks.finetune.datasets": "the published datasets at both scales",
    "evaluate.tasks.finetune_medklip.datasets": "NIH ChestX-ray14 (G2D Table 7) at both scales",
    "evaluate.tasks.finetune_medklip.split_files": "unset at both scales: MedKLIP's train / valid files are not public",
    "evaluate.tasks.finetune_medklip.engine.lr": "the G2D paper's NIH fine-tuning lr 1e-4 (on MedKLIP's split)",
    "evaluate.tasks.segmentation.datasets": "the published datasets at both scales",
    "evaluate.tasks.segmentation_ed.datasets": "differs only where the demo drops RSNA",
    "matrix": "the same methods, tasks and fractions at both scales",
    "report": "the same report settings at both scales",
    "audit.out": "the same directory layout at both scales",
    "audit.hash_size": "the same perceptual hash (256 bits) at both scales",
    "audit.hamming_threshold": "calibrated on the synthetic data only (no credentialed data here); check it on yours",
    "audit.image_lists": "none by default at both scales (a user adds e.g. RAD-DINO's training_images.csv)",
    "resources": "compared per job: scheduler requests",
    "pretrain.engine.precision": "auto at both scales",
    "evaluate.engine.precision": "auto at both scales",
    "evaluate.tasks.linear.engine.precision": "auto at both scales",
    "pretrain.engine.weight_decay": "the demo gives every method G2D's 1e-8 (the G2D / ConVIRT recipes' value)",
    "pretrain.engine.schedule": "linear warm-up + cosine, the G2D paper's and DINOv2's schedule",
    "pretrain.methods.raddino.engine.weight_decay": "DINOv2's 0.04, restated in the demo over the shared engine's",
    "pretrain.methods.raddino.engine.weight_decay_end": "DINOv2's 0.4, restated in the demo over the shared engine's",
    "pretrain.methods.raddino.engine.clip_norm": "DINOv2's 3.0, restated in the demo over the shared engine's null",
    "evaluate.engine.lr": "the MGCA protocol's 5e-4 (linear, detection), the demo's default too",
    "evaluate.tasks.linear.engine.patience": "the MGCA protocol's early-stopping patience 10",
    "evaluate.tasks.finetune.engine.lr": "the G2D paper's NIH fine-tuning lr 1e-4",
    "evaluate.tasks.segmentation.engine.weight_decay": "the MGCA protocol's 0.05",
    "evaluate.tasks.segmentation_ed.engine.weight_decay": "the MGCA protocol's 0.05",
    "pretrain.methods.raddino.init_head": "a fresh DINO head at both scales unless the user points at a release's",
}


def _resolved_paper_value(paper: dict, dotted: str):
    """The value the paper set gives the demo key ``dotted`` (resolved the way the stage commands resolve it);
    a shared engine key is compared with every method's / task's resolved engine. Returns a list of values."""
    parts = dotted.split(".")
    if parts[:2] == ["pretrain", "methods"] and parts[2] in paper["pretrain"]["methods"]:
        return [presets.leaves(config.method_params(paper, parts[2])).get(".".join(parts[3:]), "<absent>")]
    if parts[:2] == ["pretrain", "engine"]:
        methods = paper["pretrain"]["methods"]
        return [config.method_params(paper, m)["engine"].get(parts[2], "<absent>") for m in methods]
    if parts[:2] == ["evaluate", "tasks"] and parts[2] in paper["evaluate"]["tasks"]:
        return [presets.leaves(config.task_params(paper, parts[2])).get(".".join(parts[3:]), "<absent>")]
    if parts[:2] == ["evaluate", "engine"]:
        return [config.task_params(paper, t)["engine"].get(parts[2], "<absent>") for t in paper["evaluate"]["tasks"]]
    if parts[:2] == ["data", "datasets"] and parts[2] in paper["data"]["datasets"]:
        return [presets.leaves(config.dataset_params(paper, parts[2])).get(".".join(parts[3:]), "<absent>")]
    return [presets.leaves(paper).get(dotted, "<absent>")]


def _shared(dotted: str) -> bool:
    return any(dotted == k or dotted.startswith(k + ".") for k in SHARED)


def test_no_demo_value_survives_the_switch_to_the_paper_set(tmp_path):
    """Walk every leaf the demo file sets explicitly; the resolved paper parameters may hold the same value only
    where SHARED says why."""
    demo = yaml.safe_load((ROOT / "params.yaml").read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(demo))
    out = subprocess.run([sys.executable, "-m", "cxrbench", "use-params", str(PAPER)], cwd=tmp_path,
                         capture_output=True, text=True, check=True)
    assert "replaced" in out.stdout
    paper = config.load_params(tmp_path / "params.yaml")
    leaked = []
    for dotted, value in presets.leaves(demo).items():
        if dotted == "scale" or _shared(dotted):
            continue
        if value in _resolved_paper_value(paper, dotted):
            leaked.append(f"{dotted} = {value!r}")
    assert not leaked, "demo values in the resolved paper parameters:\n  " + "\n  ".join(leaked)


def test_chexpert_5x200_is_the_papers_after_the_switch(tmp_path):
    """The bug the issue found: the demo's n_5x200 = 20 survived a deep merge (train 185,927 instead of 185,027)."""
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    subprocess.run([sys.executable, "-m", "cxrbench", "use-params", str(PAPER)], cwd=tmp_path, check=True,
                   capture_output=True)
    options = config.dataset_params(config.load_params(tmp_path / "params.yaml"), "chexpert")["options"]
    assert options.get("n_5x200", 200) == 200


def test_every_g2d_ablation_entry_differs_from_g2d_in_its_one_change(params):
    """workflow/params/g2d_ablations.yaml: each Table 5 / Table 8 row is the g2d entry with the change it names,
    and the report maps each to its published row."""
    from cxrbench.report.published import published_rows

    overlay = yaml.safe_load((ROOT / "workflow" / "params" / "g2d_ablations.yaml").read_text())
    p = config.validate_params(config.merge(params, overlay))
    base = presets.leaves(config.method_params(p, "g2d"))
    rows = published_rows()
    for entry, section in overlay["pretrain"]["methods"].items():
        r = presets.leaves(config.method_params(p, entry))
        changed = {k for k in set(base) | set(r) if base.get(k) != r.get(k)} - {"name"}
        changed = {k for k in changed if not k.startswith("preset.")}
        wanted = {k for k in presets.leaves(section) if k != "method"}
        if entry == "g2d_code":  # a recipe switch: many values, and variant itself
            assert "variant" in changed and "seg_loss.dice_on_logits" in changed
        else:
            assert changed == wanted, (entry, changed)
        assert entry in rows or entry == "g2d_code", entry
