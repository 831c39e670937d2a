"""hloc text formats: exact round-trips and file:line errors."""
import pytest
import torch

from hloc_bpnp.geometry import Camera, Pose, so3_exp
from hloc_bpnp.io.hloc_text import (
    FormatError, read_pairs, read_query_list, read_results, write_pairs, write_query_list, write_results,
)


def _random_pose(g):
    aa = torch.randn(3, generator=g, dtype=torch.float64) * 2
    return Pose(so3_exp(aa), torch.randn(3, generator=g, dtype=torch.float64) * 10)


def test_query_list_roundtrip_exact(tmp_path):
    queries = {
        "query/night/a.jpg": Camera("SIMPLE_RADIAL", 1600, 1200, torch.tensor([1469.2, 800.0, 600.0, -0.0353], dtype=torch.float64)),
        "b.png": Camera("PINHOLE", 640, 480, torch.tensor([525.0, 526.1 / 3, 320.0, 240.0], dtype=torch.float64)),
        "c.jpg": Camera("OPENCV", 10, 20, torch.tensor([1, 2, 3, 4, 1e-3, -2e-5, 1e-7, 0.1 / 7], dtype=torch.float64)),
    }
    p = write_query_list(tmp_path / "sub" / "q.txt", queries)
    back = read_query_list(p)
    assert list(back) == list(queries)
    for n, cam in queries.items():
        assert back[n].model == cam.model and (back[n].width, back[n].height) == (cam.width, cam.height)
        assert torch.equal(back[n].params, cam.params)


def test_query_list_reads_hloc_lines_with_comments(tmp_path):
    p = tmp_path / "q.txt"
    p.write_text("# comment\n\nq1.jpg SIMPLE_RADIAL 1024 768 800 512 384 -0.01\n  \nq2.jpg PINHOLE 640 480 500 501 320 240\n")
    q = read_query_list(p)
    assert list(q) == ["q1.jpg", "q2.jpg"]
    assert q["q2.jpg"].params.tolist() == [500, 501, 320, 240]


@pytest.mark.parametrize(
    "line, msg",
    [
        ("q.jpg SIMPLE_RADIAL 1024 768 800 512 384", "needs 4 params, got 3"),
        ("q.jpg FISHEYE 1024 768 800 512 384 0", "unknown camera model 'FISHEYE'"),
        ("q.jpg PINHOLE 640 480 500 abc 320 240", "'abc' is not a number"),
        ("q.jpg PINHOLE 640.5 480 500 500 320 240", "image width '640.5' is not an integer"),
        ("q.jpg PINHOLE 640 480", "needs 4 params, got 0"),
        ("q.jpg PINHOLE 640", "expected 'name MODEL WIDTH HEIGHT params...'"),
        ("q.jpg PINHOLE 640 480 500 nan 320 240", "not finite"),
    ],
)
def test_query_list_errors_name_file_and_line(tmp_path, line, msg):
    p = tmp_path / "q.txt"
    p.write_text("# header\nok.jpg PINHOLE 640 480 500 500 320 240\n\n" + line + "\n")
    with pytest.raises(ValueError) as e:
        read_query_list(p)
    assert isinstance(e.value, FormatError)
    assert str(e.value).startswith(f"{p}:4: ")
    assert msg in str(e.value)


def test_duplicate_query_is_an_error(tmp_path):
    p = tmp_path / "q.txt"
    p.write_text("a PINHOLE 1 1 1 1 0 0\na PINHOLE 1 1 1 1 0 0\n")
    with pytest.raises(ValueError, match=r"q\.txt:2: duplicate image 'a' \(first on line 1\)"):
        read_query_list(p)


def test_pairs_roundtrip_and_errors(tmp_path):
    pairs = [("db/1.jpg", "q/2.jpg"), ("a", "b"), ("a", "b")]
    p = write_pairs(tmp_path / "pairs.txt", pairs)
    assert read_pairs(p) == pairs
    bad = tmp_path / "bad.txt"
    bad.write_text("a b\n# c\na b c\n")
    with pytest.raises(ValueError, match=r"bad\.txt:3: expected 'name0 name1', got 3 fields"):
        read_pairs(bad)
    with pytest.raises(ValueError, match="without whitespace"):
        write_pairs(tmp_path / "x.txt", [("a b", "c")])


def test_results_roundtrip_full_precision(tmp_path):
    g = torch.Generator().manual_seed(0)
    poses = {f"q{i}.jpg": _random_pose(g) for i in range(50)}
    p = write_results(tmp_path / "res.txt", poses)
    back = read_results(p)
    assert list(back) == list(poses)
    for n, pose in poses.items():
        assert torch.allclose(back[n].R, pose.R, atol=1e-14, rtol=0)
        assert torch.equal(back[n].t, pose.t)
    # a second write/read cycle is stable to the last bits of the quaternion
    back2 = read_results(write_results(tmp_path / "res2.txt", back))
    for n in poses:
        assert (back2[n].qvec() - back[n].qvec()).abs().max() < 1e-15
        assert torch.equal(back2[n].t, back[n].t)


def test_results_values_are_cam_from_world(tmp_path):
    p = tmp_path / "r.txt"
    # 90 degrees about z, t = (1, 2, 3)
    s = 0.5 ** 0.5
    p.write_text(f"img.jpg {s} 0 0 {s} 1 2 3\n")
    pose = read_results(p)["img.jpg"]
    expected = torch.tensor([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]], dtype=torch.float64)
    assert torch.allclose(pose.R, expected, atol=1e-15)
    assert pose.t.tolist() == [1, 2, 3]


def test_results_non_unit_quaternion_is_normalised_zero_is_error(tmp_path):
    p = tmp_path / "r.txt"
    p.write_text("a 2 0 0 0 0 0 0\n")
    assert torch.allclose(read_results(p)["a"].R, torch.eye(3, dtype=torch.float64))
    p.write_text("a 1 0 0 0 0 0 0\n\nb 0 0 0 0 1 2 3\n")
    with pytest.raises(ValueError, match=r"r\.txt:3: .*zero quaternion"):
        read_results(p)
    p.write_text("a 1 0 0 0 0 0\n")
    with pytest.raises(ValueError, match=r"r\.txt:1: expected 'name qw qx qy qz tx ty tz' \(8 fields\), got 7"):
        read_results(p)


@pytest.mark.parametrize("reader", [read_query_list, read_pairs, read_results])
def test_missing_file_names_it(tmp_path, reader):
    missing = tmp_path / "nope.txt"
    with pytest.raises(FileNotFoundError) as e:
        reader(missing)
    assert str(missing) in str(e.value)
