"""The sequence preset: `hloc-bpnp track` and `pipelines/sequence.py` load the same shipped
preset through `sequence_config`, and a preset of the wrong kind (or a typo) is an error naming
the file and the key(s), before any long work (fast: no map is built)."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


class _Stop(Exception):
    pass


def _track_conf(monkeypatch, tmp_path, *extra):
    """Run `hloc-bpnp track` up to the SequenceLocalizer and return the conf it is built with
    (the map and the localizer are stand-ins: nothing is tracked)."""
    import hloc_bpnp.localization as L
    import hloc_bpnp.mapping as M
    import hloc_bpnp.sequence as S
    from hloc_bpnp.cli import build_parser, main
    from hloc_bpnp.io.png import write_png

    build_parser()  # every command module imported before the stand-ins below
    frames = tmp_path / "frames"
    frames.mkdir(exist_ok=True)
    write_png(frames / "1.png", np.zeros((48, 64, 3), np.uint8))
    seen = {}

    class Recorder:
        def __init__(self, localizer, conf):
            seen["loc"], seen["seq"] = localizer, conf
            raise _Stop

    monkeypatch.setattr(M.Map, "load", staticmethod(lambda path: object()))
    monkeypatch.setattr(L, "Localizer", lambda m, conf: ("localizer", conf))
    monkeypatch.setattr(S, "SequenceLocalizer", Recorder)
    with pytest.raises(_Stop):
        main(["track", "--map", str(tmp_path / "map"), "--frames", str(frames), "--intrinsics", "50", "50", "32",
              "24", "--output", str(tmp_path / "out"), *extra])
    return seen


def test_track_command_builds_the_tracker_with_the_shipped_preset(monkeypatch, tmp_path):
    from hloc_bpnp.localization import localization_config
    from hloc_bpnp.sequence import sequence_config
    from hloc_bpnp.sequence.tracker import default_conf

    preset = sequence_config("default")
    # the preset differs from the library defaults where it matters (else this test could not fail)
    assert preset["growth"]["reextract"] is False and default_conf["growth"]["reextract"] is True
    assert preset["tracking"]["search_final_rounds"] != default_conf["tracking"]["search_final_rounds"]

    # the pipeline loads the same preset through the same helper (imported before the stand-ins
    # below: its modules must bind the real classes)
    spec = importlib.util.spec_from_file_location("pipeline_sequence", ROOT / "pipelines" / "sequence.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.sequence_config is sequence_config and mod.DEFAULT_PRESET == "default"

    seen = _track_conf(monkeypatch, tmp_path)
    assert seen["seq"] == sequence_config("default", {"growth": {"enabled": True, "local_ba": False}})
    assert seen["loc"] == ("localizer", localization_config("default"))

    seen = _track_conf(monkeypatch, tmp_path, "--sequence-config", "realtime", "--no-growth", "--local-ba")
    assert seen["seq"] == sequence_config("realtime", {"growth": {"enabled": False, "local_ba": True}})
    assert seen["seq"]["tracking"]["anchor_min_inliers"] == 50
    yaml_path = tmp_path / "mine.yaml"
    yaml_path.write_text("tracking:\n  search_final_rounds: 5\n")
    seen = _track_conf(monkeypatch, tmp_path, "--sequence-config", str(yaml_path))
    assert seen["seq"]["tracking"]["search_final_rounds"] == 5
    assert seen["seq"]["growth"]["reextract"] is True  # a user file is over the library defaults


def test_track_command_rejects_a_preset_of_the_wrong_kind(tmp_path, caplog):
    from hloc_bpnp.cli import main

    loc = CONFIGS / "localization" / "fast.yaml"
    rc = main(["track", "--map", str(tmp_path / "no_map"), "--frames", str(tmp_path), "--output",
               str(tmp_path / "o"), "--sequence-config", str(loc)])
    assert rc == 2
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert str(loc) in msg and "'retrieval'" in msg and "'query_features'" in msg and "'match_3d_only'" in msg
    assert "localization preset, not a sequence one" in msg
    caplog.clear()
    seq = CONFIGS / "sequence" / "default.yaml"
    rc = main(["track", "--map", str(tmp_path / "no_map"), "--frames", str(tmp_path), "--output",
               str(tmp_path / "o"), "--config", str(seq)])
    assert rc == 2
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert str(seq) in msg and "'tracking'" in msg and "'growth'" in msg
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("option, wrong, keys", [
    ("--config", "sequence/default.yaml", ["tracking", "growth"]),
    ("--config", "mapping/sequence_xfeat.yaml", ["pairs", "verification", "triangulation"]),
    ("--mapping", "localization/fast.yaml", ["query_features", "match_3d_only"]),
    ("--mapping", "sequence/realtime.yaml", ["tracking", "growth"]),
    ("--sequence-config", "localization/default.yaml", ["retrieval", "ransac", "refinement"]),
    ("--sequence-config", "mapping/default.yaml", ["features", "pairs"]),
])
def test_sequence_pipeline_rejects_a_preset_of_the_wrong_kind_at_once(option, wrong, keys, tmp_path, capsys,
                                                                     monkeypatch):
    spec = importlib.util.spec_from_file_location("pipeline_sequence", ROOT / "pipelines" / "sequence.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)

    def no_work(*a, **k):
        raise AssertionError("the pipeline started working with a preset of the wrong kind")

    for fn in ("run_synthetic", "run_scene", "run_seven_scenes", "run_frames"):
        monkeypatch.setattr(mod, fn, no_work)
    path = CONFIGS / wrong
    with pytest.raises(SystemExit) as e:
        mod.main(["--synthetic", "--output", str(tmp_path / "o"), option, str(path)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert str(path) in err
    for k in keys:
        assert repr(k) in err, (k, err)
    assert f"this is a {wrong.split('/')[0]} preset" in err
    assert not (tmp_path / "o").exists()


def test_unknown_keys_are_all_named_with_the_file(tmp_path):
    from hloc_bpnp.config import UnknownConfigKeyError
    from hloc_bpnp.sequence import sequence_config

    p = tmp_path / "typo.yaml"
    p.write_text("tracking:\n  search_radius: 0.02\n  serch_final_rounds: 2\nmotion_prior:\n  wieght: 1\n")
    with pytest.raises(UnknownConfigKeyError) as e:
        sequence_config(p)
    assert e.value.keys == ["tracking.serch_final_rounds", "motion_prior.wieght"]
    assert str(p) in str(e.value) and "known keys" in str(e.value) and "search_final_rounds" in str(e.value)
    assert isinstance(e.value, KeyError)  # what callers caught before
    with pytest.raises(UnknownConfigKeyError, match=r"growth\.reextrakt"):
        sequence_config("default", {"growth": {"reextrakt": False}})


def test_prefetch_workers_auto_uses_two_for_photos_far_above_the_tracking_resolution():
    from types import SimpleNamespace

    from hloc_bpnp.config import load_config, merge
    from hloc_bpnp.features import build_extractor
    from hloc_bpnp.geometry import Camera
    from hloc_bpnp.sequence import SequenceLocalizer, sequence_config

    import torch

    conf = sequence_config("default")
    assert conf["tracking"]["prefetch_workers"] == "auto"
    assert sequence_config("realtime")["tracking"]["prefetch_workers"] == 1
    stub = SimpleNamespace(conf=conf, track_extractor=build_extractor(
        merge(load_config("features", "sift"), {"resize_max": 800})))

    def workers(w, h, frames=None):
        cam = Camera("PINHOLE", w, h, torch.tensor([w, w, w / 2, h / 2], dtype=torch.float64))
        return SequenceLocalizer.prefetch_workers(stub, frames or [("a.jpg", None, 0.0)], {"a.jpg": cam})

    assert workers(3072, 2048) == 2  # Strecha photos, tracked at 800 px
    assert workers(1600, 1200) == 2
    assert workers(1599, 1200) == 1
    assert workers(640, 480) == 1  # video frames
    assert SequenceLocalizer.prefetch_workers(stub, [], {}) == 1
    stub.conf = sequence_config("default", {"tracking": {"prefetch_workers": 3}})
    assert workers(640, 480) == 3
    stub.conf = sequence_config("default", {"tracking": {"prefetch_workers": 0}})
    with pytest.raises(ValueError, match="prefetch_workers"):
        workers(640, 480)
