"""datasets/*/prepare.py: one shared command line (hloc_bpnp.io.datasets.prepare), real copies
in ../shared/data prepared, a missing input reported naming it (exit 2, no traceback)."""
import importlib.util
import logging
from pathlib import Path

import pytest

from hloc_bpnp.io import read_model, read_query_list, read_results

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.parent.name for p in (ROOT / "datasets").glob("*/prepare.py"))


def _script(name):
    spec = importlib.util.spec_from_file_location(f"prepare_{name}", ROOT / "datasets" / name / "prepare.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_script_uses_the_shared_cli(name, tmp_path, caplog, capsys):
    mod = _script(name)
    with pytest.raises(SystemExit) as e:
        mod.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "Never downloads anything" in out and "--output" in out
    caplog.set_level(logging.ERROR)
    assert mod.main([str(tmp_path / "absent"), "--output", str(tmp_path / "out")]) == 2
    assert "absent" in caplog.text


def test_strecha_and_middlebury_real(shared_data, tmp_path):
    out = tmp_path / "herzjesu"
    assert _script("strecha").main([str(shared_data / "strecha_herzjesu_P8"), "--output", str(out)]) == 0
    model = read_model(out / "reference_model")
    assert len(read_query_list(out / "queries_with_intrinsics.txt")) == 8 == len(model.images)
    out = tmp_path / "temple"
    assert _script("middlebury").main([str(shared_data / "middlebury_templeRing_partial"), "--output", str(out)]) == 0
    assert len(read_query_list(out / "queries_with_intrinsics.txt")) == 19


def test_seven_scenes_real(shared_data, tmp_path):
    out = tmp_path / "redkitchen"
    assert _script("7scenes").main([str(shared_data / "seven_scenes_redkitchen"), "--output", str(out),
                                    "--step", "50"]) == 0
    assert len(read_model(out / "reference_model").images) == 8  # 400 training frames, every 50th
    gt = read_results(out / "queries_gt.txt")
    assert len(gt) == 200 == len(read_query_list(out / "queries_with_intrinsics.txt"))


def test_sacre_coeur_real(shared_data, tmp_path):
    out = tmp_path / "sc"
    assert _script("sacre_coeur").main([str(shared_data / "sacre_coeur"), "--output", str(out)]) == 0
    assert len((out / "mapping_images.txt").read_text().split()) == 10
    assert len(read_query_list(out / "queries_with_intrinsics.txt")) >= 3
