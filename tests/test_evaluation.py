"""Tests for hloc_bpnp.evaluation and the ``hloc-bpnp evaluate`` command."""
import json
import math

import numpy as np
import pytest
import torch

from hloc_bpnp.evaluation import (
    Threshold,
    evaluate,
    format_failure_reasons,
    format_table,
    load_evaluation_config,
    load_ground_truth,
    parse_thresholds,
    plot_cumulative,
    read_query_logs,
    read_query_names,
)
from hloc_bpnp.geometry import Camera, Pose, so3_exp

DT = torch.float64


def random_pose(seed: int) -> Pose:
    g = torch.Generator().manual_seed(seed)
    aa = torch.randn(3, generator=g, dtype=DT)
    return Pose(so3_exp(aa), torch.randn(3, generator=g, dtype=DT) * 3)


def perturbed(gt: Pose, angle_deg: float, axis, offset) -> Pose:
    """GT rotated by ``angle_deg`` about ``axis`` (world frame) with its centre moved by ``offset``."""
    axis = torch.tensor(axis, dtype=DT)
    dR = so3_exp(axis / axis.norm() * math.radians(angle_deg))
    R = gt.R @ dR  # R_est R_gt^T = R_gt dR R_gt^T: same angle as dR
    return Pose.from_center(R, gt.center + torch.tensor(offset, dtype=DT))


def naive_arccos_deg(R_est, R_gt) -> float:
    c = (torch.trace(R_est @ R_gt.T) - 1) / 2
    return math.degrees(math.acos(max(-1.0, min(1.0, float(c)))))


# ------------------------------------------------------------------------- errors
def test_exact_errors_hand_made():
    gt = {f"q{i}": random_pose(i) for i in range(3)}
    est = {
        "q0": perturbed(gt["q0"], 0.1, [1.0, 2.0, 3.0], [0.01, 0.0, 0.0]),
        "q1": perturbed(gt["q1"], 1.5, [0.0, -1.0, 0.2], [0.0, 0.03, 0.04]),
        "q2": gt["q2"],
    }
    r = evaluate(est, gt)
    assert r.names == ["q0", "q1", "q2"]
    np.testing.assert_allclose(r.rotation_errors_deg, [0.1, 1.5, 0.0], rtol=0, atol=1e-9)
    np.testing.assert_allclose(r.to_report_unit(r.position_errors), [1.0, 5.0, 0.0], rtol=0, atol=1e-9)
    assert r.n_queries == r.n_localized == 3
    assert r.median_rot_deg_all == pytest.approx(0.1, abs=1e-9)
    assert r.median_pos_all * 100 == pytest.approx(1.0, abs=1e-9)
    assert r.mean_rot_deg_localized == pytest.approx(1.6 / 3, abs=1e-9)
    assert r.mean_pos_localized == pytest.approx(0.02, abs=1e-11)
    # default preset: 2cm/0.2, 5cm/0.5, 10cm/1, 0.25m/2, 0.5m/5, 5m/10 (inclusive)
    np.testing.assert_allclose(r.recalls, [2 / 3, 2 / 3, 2 / 3, 1, 1, 1])


def test_near_orthonormal_gt_gives_zero_error():
    g = torch.Generator().manual_seed(0)
    gt, est = {}, {}
    for i in range(5):
        p = random_pose(10 + i)
        R_noisy = p.R + 1e-6 * torch.randn(3, 3, generator=g, dtype=DT)  # Strecha-like GT
        gt[f"q{i}"] = Pose(R_noisy, p.t)
        est[f"q{i}"] = Pose(R_noisy.clone(), p.t.clone())
    r = evaluate(est, gt)
    assert r.rotation_errors_deg.max() < 1e-9
    # the arccos-of-trace form invents a visible error on the same input
    assert max(naive_arccos_deg(p.R, p.R) for p in gt.values()) > 1e-3


def test_failures_count_as_infinite():
    gt = {f"q{i}": random_pose(i) for i in range(5)}
    bad = Pose(gt["q3"].R.clone(), torch.tensor([math.nan, 0.0, 0.0], dtype=DT))
    est = {
        "q0": perturbed(gt["q0"], 0.3, [0, 0, 1.0], [0.02, 0, 0]),
        "q1": perturbed(gt["q1"], 0.1, [0, 1.0, 0], [0.0, 0.01, 0]),
        "q2": None,
        "q3": bad,
        "q4": gt["q4"],  # a pose is written but the log says the query failed
    }
    logs = {"q4": {"success": False, "failure_reason": "too few inliers"}, "q0": {"success": True}}
    r = evaluate(est, gt, logs=logs)
    assert r.n_queries == 5 and r.n_localized == 2
    assert list(r.localized) == [True, True, False, False, False]
    assert np.isinf(r.rotation_errors_deg[2:]).all() and np.isinf(r.position_errors[2:]).all()
    # hloc convention: 3 of 5 failed -> the median over all queries is infinite
    assert math.isinf(r.median_rot_deg_all) and math.isinf(r.median_pos_all)
    assert r.median_rot_deg_localized == pytest.approx(0.2, abs=1e-9)
    assert r.median_pos_localized == pytest.approx(0.015, abs=1e-11)
    assert r.failure_reasons == {"q2": "no pose", "q3": "non-finite pose", "q4": "too few inliers"}
    assert r.recalls[0] == pytest.approx(1 / 5)  # only q1 within 2cm/0.2deg
    assert r.recalls[-1] == pytest.approx(2 / 5)


def test_missing_queries_and_median_with_one_failure():
    gt = {f"q{i}": random_pose(i) for i in range(3)}
    est = {"q0": perturbed(gt["q0"], 1.0, [1, 0, 0.0], [0, 0, 0.1]),
           "q1": perturbed(gt["q1"], 3.0, [1, 1, 0.0], [0, 0, 0.3])}
    r = evaluate(est, gt)
    assert r.failure_reasons == {"q2": "not in results"}
    assert r.median_rot_deg_all == pytest.approx(3.0, abs=1e-9)  # sorted: 1, 3, inf
    assert r.median_pos_all == pytest.approx(0.3, abs=1e-12)
    assert r.median_rot_deg_localized == pytest.approx(2.0, abs=1e-9)
    assert r.failure_reason_counts == {"not in results": 1}
    assert "1 x not in results" in format_failure_reasons({"s": r})


def test_recall_threshold_inclusive_and_exclusive():
    gt = {"a": Pose.identity(), "b": Pose.identity()}
    # centre exactly 0.5 away (exactly representable), zero rotation error
    est = {"a": Pose(torch.eye(3, dtype=DT), torch.tensor([-0.5, 0.0, 0.0], dtype=DT)),
           "b": Pose(torch.eye(3, dtype=DT), torch.tensor([0.0, 0.0, -0.25], dtype=DT))}
    ths = [(0.5, 5.0), (0.25, 0.0)]
    inc = evaluate(est, gt, ths)
    assert inc.position_errors.tolist() == [0.5, 0.25] and inc.rotation_errors_deg.tolist() == [0.0, 0.0]
    assert inc.recalls.tolist() == [1.0, 0.5]  # <=: both at 0.5 m; b at exactly 0.25 m / 0 deg
    exc = evaluate(est, gt, ths, inclusive=False)
    assert exc.recalls.tolist() == [0.5, 0.0]  # <: the boundary does not count


def test_unknown_names_and_queries():
    gt = {f"q{i}": random_pose(i) for i in range(3)}
    est = {"q0": gt["q0"], "db/q9.jpg": gt["q1"], "zz": gt["q2"]}
    with pytest.raises(ValueError, match=r"2 estimate\(s\) have no ground truth.*db/q9.jpg.*zz"):
        evaluate(est, gt)
    r = evaluate(est, gt, unknown="warn")
    assert r.n_queries == 3 and r.n_localized == 1
    r = evaluate({"q0": gt["q0"], "q1": gt["q1"]}, gt, queries=["q0"])  # q1, q2: map images
    assert r.names == ["q0"] and r.n_localized == 1
    with pytest.raises(KeyError, match="q7"):
        evaluate({}, gt, queries=["q7"])
    with pytest.raises(ValueError, match="unknown must be"):
        evaluate({}, gt, unknown="ignore")
    with pytest.raises(ValueError, match="batch shape"):
        evaluate({"q0": Pose.identity((2,))}, gt)
    with pytest.raises(ValueError, match="must be a Pose"):
        evaluate({"q0": np.eye(4)}, gt)


def test_threshold_presets_and_validation(tmp_path):
    default = load_evaluation_config("default")
    pairs = [(t.position, t.rotation_deg) for t in default["thresholds"]]
    for p in [(0.25, 2.0), (0.5, 5.0), (5.0, 10.0), (0.02, 0.2), (0.05, 0.5), (0.1, 1.0)]:
        assert p in pairs
    assert default["scale_to_cm"] == 100.0 and default["inclusive"] is True
    aachen = load_evaluation_config("aachen")
    assert [(t.position, t.rotation_deg) for t in aachen["thresholds"]] == [(0.25, 2), (0.5, 5), (5, 10)]
    assert load_evaluation_config("unitless")["scale_to_cm"] is None
    with pytest.raises(FileNotFoundError, match="available presets"):
        load_evaluation_config("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("thresholds: [[0.1, 1.0]]\nscale_to_m: 1\n")
    with pytest.raises(KeyError, match="scale_to_m"):
        load_evaluation_config(bad)
    with pytest.raises(ValueError, match="threshold 1"):
        parse_thresholds([(0.1, 1.0), (0.2,)])
    with pytest.raises(ValueError, match="finite and >= 0"):
        parse_thresholds([(-0.1, 1.0)])
    assert Threshold(0.02, 0.2).label() == "2cm,0.2deg"
    assert Threshold(0.25, 2).label() == "0.25m,2deg"
    assert Threshold(0.1, 1).label(None) == "0.1u,1deg"


def test_table_and_json():
    gt = {f"q{i}": random_pose(i) for i in range(4)}
    est = {"q0": perturbed(gt["q0"], 0.1, [1, 2, 3.0], [0.01, 0, 0]),
           "q1": perturbed(gt["q1"], 0.3, [0, 0, 1.0], [0, 0.02, 0])}
    r1 = evaluate(est, gt)
    r2 = evaluate({k: gt[k] for k in gt}, gt, [(0.02, 0.2)])
    table = format_table({"fountain": r1, "herzjesu": r2}, title="demo")
    lines = table.splitlines()
    assert lines[0] == "demo" and "med R [deg]" in lines[1] and "t loc [cm]" in lines[1]
    assert len({len(l) for l in lines[1:]}) == 1  # aligned columns
    row = lines[3].split()
    # name, n, loc, med R all, med t all (inf: half failed -> middle pair contains inf), loc medians
    assert row[:7] == ["fountain", "4", "2", "inf", "inf", "0.200", "1.500"]
    assert row[7:] == ["25.0", "50.0", "50.0", "50.0", "50.0", "50.0"]
    row2 = lines[4].split()
    assert row2[:7] == ["herzjesu", "4", "4", "0.000", "0.000", "0.000", "0.000"]
    assert row2[7:] == ["100.0"] + ["-"] * 5
    d = r1.to_dict()
    s = json.dumps(d, allow_nan=False)  # strict JSON: inf/nan became null
    back = json.loads(s)
    assert back["median_rotation_deg_all"] is None
    assert back["median_position_localized"] == pytest.approx(1.5)
    assert back["recalls"][0] == {"position": 0.02, "rotation_deg": 0.2, "label": "2cm,0.2deg", "recall": 0.25}
    assert back["per_query"][2] == {"name": "q2", "localized": False, "rotation_error_deg": None,
                                    "position_error": None, "failure_reason": "not in results"}
    r3 = evaluate(est, gt, [(0.1, 1.0)], scale_to_cm=None)
    assert "[units]" in format_table({"x": r3})
    assert format_table({"x": r3}, row_header="method").startswith("method")
    with pytest.raises(ValueError, match="mix position units"):
        format_table({"a": r1, "b": r3})


def test_plot_written(tmp_path):
    gt = {f"q{i}": random_pose(i) for i in range(6)}
    est = {f"q{i}": perturbed(gt[f"q{i}"], 0.1 * i, [0, 1, 1.0], [0.01 * i, 0, 0]) for i in range(5)}
    a = evaluate(est, gt)
    b = evaluate({}, gt)  # nothing localized: empty curve, no crash
    out = plot_cumulative({"method A": a, "method B": b}, tmp_path / "sub" / "cum.png", title="t")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    out2 = plot_cumulative({"a": a}, tmp_path / "lin.png", log_scale=False)
    assert out2.stat().st_size > 5000


def test_cumulative_curve_counts_failures():
    from hloc_bpnp.evaluation import cumulative_curve

    e, y = cumulative_curve(np.array([0.3, np.inf, 0.1, 0.2]), 4)
    assert e.tolist() == [0.1, 0.2, 0.3] and y.tolist() == [0.25, 0.5, 0.75]


# ------------------------------------------------------------------------- inputs
def test_read_query_logs_formats(tmp_path):
    recs = [{"name": "a.jpg", "success": True}, {"name": "b.jpg", "success": False, "failure_reason": "few inliers"}]
    (tmp_path / "l.json").write_text(json.dumps(recs))
    (tmp_path / "d.json").write_text(json.dumps({r["name"]: r for r in recs}))
    (tmp_path / "l.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    (tmp_path / "dir").mkdir()
    for i, r in enumerate(recs):
        (tmp_path / "dir" / f"{i}.json").write_text(json.dumps(r))
    (tmp_path / "q.json").write_text(json.dumps({"queries": recs}))  # the localizer's layout
    for p in ["l.json", "d.json", "q.json", "l.jsonl", "dir"]:
        logs = read_query_logs(tmp_path / p)
        assert set(logs) == {"a.jpg", "b.jpg"} and logs["b.jpg"]["failure_reason"] == "few inliers"
    (tmp_path / "bad.jsonl").write_text(json.dumps(recs[0]) + "\n" + json.dumps({"name": "c"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: .*'success'"):
        read_query_logs(tmp_path / "bad.jsonl")
    with pytest.raises(FileNotFoundError):
        read_query_logs(tmp_path / "missing.json")


def test_ground_truth_from_colmap_and_results(tmp_path):
    from hloc_bpnp.io.hloc_text import write_results
    from hloc_bpnp.io.scene import Scene, SceneImage

    cam = Camera("PINHOLE", 640, 480, torch.tensor([500.0, 510.0, 320.0, 240.0], dtype=DT))
    poses = {f"img{i}.jpg": random_pose(i) for i in range(3)}
    Scene([SceneImage(n, cam, p) for n, p in poses.items()]).write_colmap(tmp_path / "model")
    write_results(tmp_path / "gt.txt", poses)
    for src in [tmp_path / "model", tmp_path / "gt.txt"]:
        gt = load_ground_truth(src)
        assert sorted(gt) == sorted(poses)
        r = evaluate(poses, gt)
        assert r.rotation_errors_deg.max() < 1e-6 and r.position_errors.max() < 1e-9
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a COLMAP model"):
        load_ground_truth(tmp_path / "empty")
    with pytest.raises(FileNotFoundError):
        load_ground_truth(tmp_path / "nothing")
    (tmp_path / "q.txt").write_text("# queries\nimg0.jpg PINHOLE 640 480 500 510 320 240\n\nimg2.jpg\n")
    assert read_query_names(tmp_path / "q.txt") == ["img0.jpg", "img2.jpg"]


# ------------------------------------------------------------------------- CLI
def _cli_setup(tmp_path):
    from hloc_bpnp.io.hloc_text import write_results

    gt = {f"q{i}.jpg": random_pose(i) for i in range(4)}
    write_results(tmp_path / "gt.txt", gt)
    a = {"q0.jpg": perturbed(gt["q0.jpg"], 0.1, [1, 2, 3.0], [0.01, 0, 0]),
         "q1.jpg": perturbed(gt["q1.jpg"], 0.1, [1, 0, 0.0], [0, 0.01, 0]),
         "q2.jpg": perturbed(gt["q2.jpg"], 0.1, [0, 1, 0.0], [0, 0, 0.01])}
    b = {k: perturbed(v, 4.0, [0, 0, 1.0], [0.4, 0, 0]) for k, v in gt.items()}
    write_results(tmp_path / "method_a.txt", a)
    write_results(tmp_path / "method_b.txt", b)
    return gt


def test_cli_end_to_end(tmp_path, capsys):
    from hloc_bpnp.cli import main

    _cli_setup(tmp_path)
    (tmp_path / "logs.jsonl").write_text(json.dumps({"name": "q3.jpg", "success": False,
                                                     "failure_reason": "too few inliers"}) + "\n")
    rc = main(["evaluate", "--results", str(tmp_path / "method_a.txt"), "--results", str(tmp_path / "method_b.txt"),
               "--gt", str(tmp_path / "gt.txt"), "--thresholds", "aachen", "--scene-name", "toy",
               "--logs", str(tmp_path / "logs.jsonl"), "--logs", str(tmp_path / "logs.jsonl"),
               "--json", str(tmp_path / "out" / "eval.json"), "--plot", str(tmp_path / "out" / "cum.png")])
    assert rc == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    row_a = next(l for l in lines if l.startswith("toy/method_a")).split()
    row_b = next(l for l in lines if l.startswith("toy/method_b")).split()
    assert row_a == ["toy/method_a", "4", "3", "0.100", "1.000", "0.100", "1.000", "75.0", "75.0", "75.0"]
    # method_b: q3 has a pose but the log marks it failed
    assert row_b == ["toy/method_b", "4", "3", "4.000", "40.000", "4.000", "40.000", "0.0", "75.0", "75.0"]
    assert "toy/method_a: 1 x too few inliers" in out
    data = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert set(data["results"]) == {"toy/method_a", "toy/method_b"}
    assert data["results"]["toy/method_a"]["median_rotation_deg_all"] == pytest.approx(0.1, abs=1e-9)
    assert data["results"]["toy/method_b"]["failure_reasons"] == {"too few inliers": 1}
    assert (tmp_path / "out" / "cum.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_colmap_gt_queries_and_errors(tmp_path, capsys):
    from hloc_bpnp.cli import main
    from hloc_bpnp.io.scene import Scene, SceneImage

    gt = _cli_setup(tmp_path)
    cam = Camera("SIMPLE_PINHOLE", 100, 80, torch.tensor([90.0, 50.0, 40.0], dtype=DT))
    Scene([SceneImage(n, cam, p) for n, p in gt.items()]).write_colmap(tmp_path / "model", text=False)
    (tmp_path / "queries.txt").write_text("q0.jpg\nq1.jpg\n")
    rc = main(["evaluate", "--results", str(tmp_path / "method_a.txt"), "--gt", str(tmp_path / "model"),
               "--queries", str(tmp_path / "queries.txt"), "--thresholds", "default", "--exclusive"])
    assert rc == 0
    row = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("method_a")).split()
    assert row[:7] == ["method_a", "2", "2", "0.100", "1.000", "0.100", "1.000"]
    # names not in the ground truth -> error exit code with the names in the log
    from hloc_bpnp.io.hloc_text import write_results

    write_results(tmp_path / "typo.txt", {"Q0.JPG": gt["q0.jpg"]})
    assert main(["evaluate", "--results", str(tmp_path / "typo.txt"), "--gt", str(tmp_path / "gt.txt")]) == 2
    assert main(["evaluate", "--results", str(tmp_path / "typo.txt"), "--gt", str(tmp_path / "gt.txt"),
                 "--unknown", "warn", "--scale-to-cm", "none"]) == 0
    assert "[units]" in capsys.readouterr().out
    assert main(["evaluate", "--results", str(tmp_path / "method_a.txt"), "--gt", str(tmp_path / "nope")]) == 2


# ------------------------------------------------------------------------- real data
@pytest.mark.data
@pytest.mark.parametrize("scene", ["strecha_fountain_P11", "strecha_herzjesu_P8"])
def test_strecha_gt_identical_poses_zero_error(shared_data, scene):
    """Strecha GT rotations are orthonormal only to ~1e-6: identical poses must give ~0."""
    gt = {}
    for f in sorted((shared_data / scene / "gt_dense_cameras").glob("*.camera")):
        rows = np.loadtxt(f, max_rows=8)
        S, C = torch.tensor(rows[4:7]), torch.tensor(rows[7])  # camera-to-world rotation, centre
        gt[f.name] = Pose.from_center(S.T, C)
    assert len(gt) >= 8
    r = evaluate({k: Pose(v.R.clone(), v.t.clone()) for k, v in gt.items()}, gt, "fine")
    assert r.rotation_errors_deg.max() < 1e-9 and r.position_errors.max() < 1e-9
    assert r.recalls.tolist() == [1.0] * len(r.thresholds)
    assert max(naive_arccos_deg(p.R, p.R) for p in gt.values()) > 0.01  # what arccos would report


def test_cli_reads_localizer_log_next_to_results(tmp_path, capsys):
    """The localizer writes ``<results>.txt`` + ``<results>_log.json``; evaluate finds the log."""
    results_mod = pytest.importorskip("hloc_bpnp.localization.results")
    from hloc_bpnp.cli import main

    gt = {f"q{i}.jpg": random_pose(i) for i in range(3)}
    from hloc_bpnp.io.hloc_text import write_results

    write_results(tmp_path / "gt.txt", gt)
    R = results_mod.LocalizationResult
    loc = {
        "q0.jpg": R("q0.jpg", success=True, pose=perturbed(gt["q0.jpg"], 0.1, [0, 0, 1.0], [0.01, 0, 0])),
        "q1.jpg": R("q1.jpg").fail(results_mod.TOO_FEW_INLIERS),
        "q2.jpg": R("q2.jpg").fail(results_mod.NO_MATCHES),
    }
    results_mod.write_results(loc, tmp_path / "loc.txt")
    assert (tmp_path / "loc_log.json").is_file()
    assert main(["evaluate", "--results", str(tmp_path / "loc.txt"), "--gt", str(tmp_path / "gt.txt")]) == 0
    out = capsys.readouterr().out
    assert f"1 x {results_mod.TOO_FEW_INLIERS}" in out and f"1 x {results_mod.NO_MATCHES}" in out
    assert main(["evaluate", "--results", str(tmp_path / "loc.txt"), "--gt", str(tmp_path / "gt.txt"),
                 "--no-logs"]) == 0
    assert "2 x not in results" in capsys.readouterr().out
