"""The README's command-line walkthrough, run as written in an empty folder (issue 12.1):
the map holds only map images, evaluate counts exactly the queries, all localized."""
from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path

from hloc_bpnp.cli import main

ROOT = Path(__file__).resolve().parents[1]


def readme_commands():
    text = (ROOT / "README.md").read_text()
    block = text.split("## Command line", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    block = re.sub(r"\\\n\s*", " ", block)
    return [shlex.split(line) for line in block.splitlines()
            if line.strip().startswith("hloc-bpnp") and "--help" not in line]


def test_readme_walkthrough_maps_map_images_and_evaluates_queries(tmp_path, capsys, caplog):
    cmds = readme_commands()
    assert [c[1] for c in cmds] == ["synth", "map", "localize", "evaluate"]
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        for c in cmds:
            assert main(c[1:]) == 0, c
    finally:
        os.chdir(cwd)
    out = tmp_path / "outputs"
    queries = [ln.split()[0] for ln in (out / "scene" / "query_list_with_intrinsics.txt").read_text().splitlines()]
    maps = (out / "scene" / "map_list.txt").read_text().split()
    mapped = json.loads((out / "map" / "map.json").read_text())["image_names"]
    assert sorted(mapped) == sorted(maps) and not (set(mapped) & set(queries))
    table = capsys.readouterr().out
    row = next(ln.split() for ln in table.splitlines() if ln.startswith("results"))
    assert row[1:3] == [str(len(queries)), str(len(queries))]  # n queries, all localized
    results = [ln.split()[0] for ln in (out / "results.txt").read_text().splitlines() if ln.strip()]
    assert sorted(results) == sorted(queries)
    png = out / "cumulative.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # issue 12.7: visualize writes its figure for a localized and for a failed query
    q = queries[0]
    common = ["visualize", "--map", str(out / "map"), "--images", str(out / "scene" / "images"), "--name", q,
              "--queries", str(out / "scene" / "query_list_with_intrinsics.txt"),
              "--map-images", str(out / "scene" / "images")]
    assert main(common + ["--output", str(tmp_path / "ok.png")]) == 0
    strict = tmp_path / "strict.yaml"
    strict.write_text("acceptance: {min_inliers: 100000}\n")  # no pose can pass: a failed query
    assert main(common + ["--config", str(strict), "--output", str(tmp_path / "failed.png")]) == 0
    for name in ("ok.png", "failed.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10000
    assert main(common[:6] + ["nope.png", "--output", str(tmp_path / "x.png")]) == 2  # clear error, exit 2
    assert "nope.png not found" in caplog.text and not (tmp_path / "x.png").exists()
