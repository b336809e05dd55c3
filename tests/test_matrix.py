import copy

from cxrbench import matrix


def test_run_count_is_the_product_of_the_lists(params):
    # trained tasks: methods x datasets x fractions x seeds; zero-shot tasks: one fraction, one seed
    m = len(params["matrix"]["methods"])
    tasks = params["evaluate"]["tasks"]
    expected = 0
    for task in params["matrix"]["tasks"]:
        f = len(tasks[task].get("fractions", params["matrix"]["fractions"]))
        s = len(tasks[task].get("seeds", params["matrix"]["seeds"]))
        expected += m * len(tasks[task]["datasets"]) * f * s
    # by hand, per method: linear 3 datasets x 3 fractions x 3 seeds = 27, segmentation 3 fractions x 3 seeds = 9,
    # segmentation_ed / finetune / detection 3 each, zero-shot 4, grounding 3, metadata 2 x 3 = 6 -> 58; x 5 methods
    assert len(matrix.runs(params)) == expected == 290


def test_the_extended_demo_adds_three_cells(params):
    """workflow/params/demo_extended.yaml: + segmentation_ft (3 runs), report generation (1) and Object-CXR detection
    (3) per method = 65 per method, 325 in all."""
    from pathlib import Path

    import yaml

    from cxrbench import config

    overlay = yaml.safe_load((Path(__file__).resolve().parents[1] / "workflow/params/demo_extended.yaml").read_text())
    extended = config.validate_params(config.merge(params, overlay))
    added = set(matrix.runs(extended)) - set(matrix.runs(params))
    assert len(matrix.runs(extended)) == 325 and len(added) == 35
    assert {(r.task, r.dataset) for r in added} == {("segmentation_ft", "siim"), ("report_generation", "mimic"),
                                                   ("detection", "object_cxr")}


def test_runs_are_unique_sorted_and_deterministic(params):
    runs = matrix.runs(params)
    assert runs == sorted(set(runs))
    assert runs == matrix.runs(copy.deepcopy(params))


def test_paths_derive_from_parameters_alone(params):
    run = matrix.Run("g2d", "segmentation", "siim", 10, 2)
    assert run.metrics_path("results/runs") == "results/runs/g2d/segmentation/siim/f10/s2/metrics.json"
    assert matrix.checkpoint_dir(params, "g2d") == "data/checkpoints/g2d"
    assert matrix.prepared_dir(params, "rsna") == "data/prepared/rsna"


def test_seeds_multiply_trained_runs_only(params):
    p = copy.deepcopy(params)
    p["matrix"]["seeds"] = [0, 1, 2]
    runs = matrix.runs(p)
    zs = [r for r in runs if r.task == "zeroshot"]
    lin = [r for r in runs if r.task == "linear"]
    assert {r.seed for r in zs} == {0} and {r.fraction for r in zs} == {100}
    assert len(lin) == 5 * 3 * 3 * 3


def test_datasets_include_corpus_and_dependencies(params):
    p = copy.deepcopy(params)
    p["matrix"]["tasks"] = ["grounding"]
    p["evaluate"]["tasks"]["grounding"]["datasets"] = ["ms_cxr"]
    assert matrix.datasets(p) == ["mimic", "ms_cxr"]


def test_targets_cover_every_phase(params):
    t = matrix.targets(params)
    assert len(t["evaluate"]) == 290  # test_run_count_is_the_product_of_the_lists counts them by hand
    assert t["pretrain"] == [f"data/checkpoints/{m}" for m in params["matrix"]["methods"]]
    assert "results/report/summary.json" in t["report"]
    assert len(matrix.all_targets(params)) == sum(len(v) for v in t.values())
