import sys

import pytest

from cxrbench.registry import DATASETS, METHODS, TASKS, Registry


def test_every_registry_lists_what_the_protocol_needs():
    assert set(DATASETS.names()) == {"mimic", "chexpert", "nih", "rsna", "siim", "covidx", "object_cxr", "ms_cxr"}
    assert {"g2d", "mflag", "raddino", "convirt", "random", "external"} <= set(METHODS.names())
    assert {"linear", "finetune", "segmentation", "detection", "zeroshot", "grounding"} <= set(TASKS.names())


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(KeyError, match="unknown task 'linaer'; registered tasks: .*linear"):
        TASKS.get("linaer")


def test_get_imports_only_the_named_module_when_it_exists(monkeypatch):
    reg = Registry("dataset", "cxrbench.data.formats")
    for mod in [m for m in sys.modules if m.startswith("cxrbench.data.formats.")]:
        monkeypatch.delitem(sys.modules, mod)
    DATASETS_backup = dict(DATASETS._items)
    monkeypatch.setattr("cxrbench.registry.DATASETS", reg)
    import cxrbench.registry

    # the reader modules register into the module-level DATASETS, which now is `reg`
    assert cxrbench.registry.DATASETS is reg
    reg.get("rsna")
    assert "cxrbench.data.formats.rsna" in sys.modules
    assert "cxrbench.data.formats.siim" not in sys.modules
    assert not reg._discovered
    assert DATASETS_backup  # the real registry was untouched


def test_double_registration_is_an_error():
    reg = Registry("thing", "cxrbench.tasks")
    reg.register("a")(int)
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("a")(float)
