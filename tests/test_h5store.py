"""HDF5 feature/match stores: round trips, hloc layout, reversed pairs, atomic resume."""
import h5py
import numpy as np
import pytest

from hloc_bpnp.io.h5store import (FeatureStore, MatchStore, find_pair, invert_matches,
                                  names_to_pair, names_to_pair_old)


def make_feats(rng, n=50, d=128, w=3072, h=2048):
    return {
        "keypoints": (rng.random((n, 2)) * [w, h]).astype(np.float32),
        "descriptors": rng.standard_normal((n, d)).astype(np.float32),
        "scores": rng.random(n).astype(np.float32),
        "image_size": np.array([w, h]),
        "scales": rng.random(n).astype(np.float32) * 4,
    }


def test_feature_round_trip_and_nested_names(tmp_path):
    rng = np.random.default_rng(0)
    feats = {"db/a.jpg": make_feats(rng), "db/sub/b.jpg": make_feats(rng, 30), "q.png": make_feats(rng, 0)}
    path = tmp_path / "feats.h5"
    with FeatureStore(path, "w") as fs:
        for name, f in feats.items():
            fs.put(name, f)
        assert len(fs) == 3
    with FeatureStore(path) as fs:
        assert fs.names() == sorted(feats)
        assert "db/a.jpg" in fs and "db" not in fs and "a.jpg" not in fs
        for name, f in feats.items():
            got = fs.get(name)
            assert set(got) == set(f)
            np.testing.assert_allclose(got["keypoints"], f["keypoints"], atol=1e-3)
            np.testing.assert_array_equal(got["descriptors"], f["descriptors"])
            np.testing.assert_array_equal(got["scores"], f["scores"])
            np.testing.assert_array_equal(got["image_size"], f["image_size"])
            np.testing.assert_array_equal(got["scales"], f["scales"])
        assert set(fs.get("db/a.jpg", ["keypoints"])) == {"keypoints"}
        assert fs.num_keypoints("db/sub/b.jpg") == 30
        with pytest.raises(KeyError, match="has no 'oris'"):
            fs.get("q.png", ["oris"])
        with pytest.raises(ValueError, match="read-only"):
            fs.put("x.jpg", make_feats(rng))


def test_hloc_layout_raw_h5py(tmp_path):
    rng = np.random.default_rng(1)
    f = make_feats(rng, n=40, d=64, w=1600, h=1200)
    path = tmp_path / "feats.h5"
    with FeatureStore(path, "w", descriptors_as_half=True) as fs:
        fs.put("seq1/0001.jpg", f)
    with h5py.File(path, "r") as h:
        grp = h["seq1"]["0001.jpg"]  # nested groups for '/'
        assert grp["keypoints"].shape == (40, 2) and grp["keypoints"].dtype == np.float32
        assert grp["descriptors"].shape == (64, 40) and grp["descriptors"].dtype == np.float16
        assert grp["scores"].shape == (40,) and grp["scores"].dtype == np.float32
        assert tuple(grp["image_size"][()]) == (1600, 1200)
        # hloc's pixel convention on disk: top-left pixel centre at (0, 0)
        np.testing.assert_allclose(grp["keypoints"][()], f["keypoints"] - 0.5, atol=1e-4)
        np.testing.assert_allclose(grp["descriptors"][()].T, f["descriptors"], atol=1e-2)

    mpath = tmp_path / "matches.h5"
    m0 = np.array([3, -1, 0, 7], np.int64)
    with MatchStore(mpath, "w") as ms:
        ms.put("seq1/0001.jpg", "seq2/0005.jpg", m0, np.array([0.9, 0, 0.5, 0.1]))
    with h5py.File(mpath, "r") as h:
        assert names_to_pair("seq1/0001.jpg", "seq2/0005.jpg") == "seq1-0001.jpg/seq2-0005.jpg"
        grp = h["seq1-0001.jpg"]["seq2-0005.jpg"]
        assert grp["matches0"].shape == (4,) and np.issubdtype(grp["matches0"].dtype, np.integer)
        np.testing.assert_array_equal(grp["matches0"][()], m0)
        assert grp["matching_scores0"].shape == (4,) and grp["matching_scores0"].dtype == np.float32


def test_reading_an_hloc_written_file(tmp_path):
    """A file written the way hloc does (raw h5py, no attributes, '_' legacy key)."""
    path = tmp_path / "hloc_feats.h5"
    kp = np.array([[0.0, 0.0], [10.25, 20.5]], np.float32)  # hloc: pixel centre at 0
    with h5py.File(path, "w") as h:
        g = h.create_group("a/b.jpg")
        g.create_dataset("keypoints", data=kp)
        g.create_dataset("descriptors", data=np.ones((8, 2), np.float16))
    with FeatureStore(path) as fs:
        got = fs.get("a/b.jpg")
        np.testing.assert_allclose(got["keypoints"], kp + 0.5)
        assert got["descriptors"].shape == (2, 8)

    mpath = tmp_path / "hloc_matches.h5"
    with h5py.File(mpath, "w") as h:
        g = h.create_group(names_to_pair_old("x/1.jpg", "y.jpg"))
        g.create_dataset("matches0", data=np.array([1, -1, 0], np.int32))
        g.create_dataset("matching_scores0", data=np.array([0.5, 0.0, 0.25], np.float32))
    with MatchStore(mpath) as ms:
        assert ("x/1.jpg", "y.jpg") in ms and ("y.jpg", "x/1.jpg") in ms
        m, s = ms.get("x/1.jpg", "y.jpg")
        np.testing.assert_array_equal(m, [1, -1, 0])
        with pytest.raises(ValueError, match="pass num0"):
            ms.get("y.jpg", "x/1.jpg")
        m1, s1 = ms.get("y.jpg", "x/1.jpg", num0=2)
        np.testing.assert_array_equal(m1, [2, 0])
        np.testing.assert_allclose(s1, [0.25, 0.5])


def test_colmap_origin_option(tmp_path):
    path = tmp_path / "f.h5"
    kp = np.array([[1.5, 2.5]], np.float32)
    with FeatureStore(path, "w", keypoint_origin="colmap") as fs:
        fs.put("i.jpg", {"keypoints": kp})
    with h5py.File(path, "r") as h:
        np.testing.assert_array_equal(h["i.jpg/keypoints"][()], kp)
    with FeatureStore(path, "a") as fs:  # the file's own convention wins
        assert fs.keypoint_origin == "colmap"
        np.testing.assert_array_equal(fs.get("i.jpg")["keypoints"], kp)


def test_keypoints_keep_float32_precision(tmp_path):
    rng = np.random.default_rng(2)
    kp64 = rng.random((1000, 2)) * 3000.0
    with FeatureStore(tmp_path / "f.h5", "w", descriptors_as_half=True) as fs:
        fs.put("big.jpg", {"keypoints": kp64, "descriptors": rng.random((1000, 4))})
        got = fs.get("big.jpg")["keypoints"]
    assert got.dtype == np.float32
    err = np.abs(got - kp64).max()
    assert err < 1e-3, err  # float16 would be off by up to 1 px at 3000 px


def test_missing_name_lists_close_matches(tmp_path):
    rng = np.random.default_rng(3)
    with FeatureStore(tmp_path / "f.h5", "w") as fs:
        fs.put("images/0001.jpg", make_feats(rng, 5))
        fs.put("images/0002.jpg", make_feats(rng, 5))
        with pytest.raises(KeyError, match="close matches.*images/000"):
            fs.get("images/0003.jpg")


def test_input_validation(tmp_path):
    with FeatureStore(tmp_path / "f.h5", "w") as fs:
        with pytest.raises(ValueError, match=r"keypoints must be \(N, 2\)"):
            fs.put("a.jpg", {"keypoints": np.zeros((5, 3))})
        with pytest.raises(ValueError, match="descriptors must be"):
            fs.put("a.jpg", {"keypoints": np.zeros((5, 2)), "descriptors": np.zeros((4, 8))})
        assert "a.jpg" not in fs
    with MatchStore(tmp_path / "m.h5", "w") as ms:
        with pytest.raises(ValueError, match="differ"):
            ms.put("a", "b", np.zeros(3, int), np.zeros(2))
        with pytest.raises(ValueError, match="num1"):
            ms.put("a", "b", np.array([0, 5]), np.zeros(2), num1=3)
    with pytest.raises(FileNotFoundError):
        FeatureStore(tmp_path / "nope.h5")


def test_reversed_pair_lookup_and_overwrite(tmp_path):
    path = tmp_path / "m.h5"
    m0 = np.array([2, -1, 0, 1, -1], np.int32)
    s0 = np.array([0.9, 0.0, 0.8, 0.7, 0.0], np.float32)
    with MatchStore(path, "w") as ms:
        ms.put("q/a.jpg", "db/b.jpg", m0, s0, num1=4)
        assert ms.pairs() == [("q/a.jpg", "db/b.jpg")]
    with MatchStore(path) as ms:
        assert ("db/b.jpg", "q/a.jpg") in ms and ("q/a.jpg", "db/c.jpg") not in ms
        assert find_pair(ms._h5, "db/b.jpg", "q/a.jpg") == ("q-a.jpg/db-b.jpg", True)
        m, s = ms.get("q/a.jpg", "db/b.jpg")
        np.testing.assert_array_equal(m, m0)
        m1, s1 = ms.get("db/b.jpg", "q/a.jpg")  # N0 from the stored num_keypoints1
        np.testing.assert_array_equal(m1, [2, 3, 0, -1])
        np.testing.assert_allclose(s1, [0.8, 0.7, 0.9, 0.0])
        ij, sc = ms.get_matches("db/b.jpg", "q/a.jpg")
        np.testing.assert_array_equal(ij, [[2, 0], [0, 2], [1, 3]])
        np.testing.assert_allclose(sc, [0.9, 0.8, 0.7])
        with pytest.raises(KeyError, match="either order"):
            ms.get("q/a.jpg", "db/x.jpg")
    with MatchStore(path, "a") as ms:  # storing the reversed pair replaces the old one
        ms.put("db/b.jpg", "q/a.jpg", m1, s1, num1=5)
        assert ms.pairs() == [("db/b.jpg", "q/a.jpg")]
        m, _ = ms.get("q/a.jpg", "db/b.jpg")
        np.testing.assert_array_equal(m, m0)


def test_invert_matches_is_an_involution():
    rng = np.random.default_rng(4)
    n0, n1 = 30, 40
    m0 = np.full(n0, -1)
    src = rng.choice(n0, 20, replace=False)
    m0[src] = rng.choice(n1, 20, replace=False)
    s0 = rng.random(n0).astype(np.float32) * (m0 >= 0)
    m1, s1 = invert_matches(m0, s0, n1)
    m00, s00 = invert_matches(m1, s1, n0)
    np.testing.assert_array_equal(m00, m0)
    np.testing.assert_allclose(s00, s0)


class Boom(RuntimeError):
    pass


def test_atomic_writer_resumes_after_interruption(tmp_path):
    rng = np.random.default_rng(5)
    names = [f"img/{i:03d}.jpg" for i in range(6)]
    feats = {n: make_feats(rng, 10) for n in names}
    path = tmp_path / "feats.h5"
    partial = tmp_path / "feats.h5.partial"

    def job(fail_at=None):
        written = []
        with FeatureStore.writer(path) as fs:
            for i, n in enumerate(names):
                if n in fs:
                    continue
                if i == fail_at:
                    raise Boom()
                fs.put(n, feats[n])
                written.append(n)
        return written

    with pytest.raises(Boom):
        job(fail_at=3)
    assert not path.exists() and partial.exists()  # target never half-written
    assert job() == names[3:]                      # resume: only the rest is computed
    assert path.exists() and not partial.exists()
    with FeatureStore(path) as fs:
        assert fs.names() == names
        np.testing.assert_array_equal(fs.get(names[1])["descriptors"], feats[names[1]]["descriptors"])

    # extending a finished store goes through a copy; a failure leaves the target intact
    extra = "img/new.jpg"
    with pytest.raises(Boom):
        with FeatureStore.writer(path) as fs:
            assert len(fs) == 6
            fs.put(extra, make_feats(rng, 3))
            raise Boom()
    with FeatureStore(path) as fs:
        assert extra not in fs and len(fs) == 6
    with FeatureStore.writer(path) as fs:  # resumes the partial copy, which has `extra`
        assert extra in fs and len(fs) == 7
    with FeatureStore(path) as fs:
        assert len(fs) == 7


def test_writer_recovers_from_corrupt_partial(tmp_path):
    path = tmp_path / "m.h5"
    (tmp_path / "m.h5.partial").write_bytes(b"not an hdf5 file")
    with MatchStore.writer(path) as ms:
        assert len(ms) == 0
        ms.put("a", "b", np.array([0]), np.array([1.0]))
    with MatchStore(path) as ms:
        assert ms.pairs() == [("a", "b")]
    with MatchStore.writer(path, overwrite=True) as ms:
        assert len(ms) == 0
