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


def test_readme_walkthrough_maps_map_images_and_evaluates_queries(tmp_path, capsys):
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
