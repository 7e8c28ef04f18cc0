"""Every notebook runs top to bottom at smoke size and writes its figure with provenance."""

import json

import pytest

from paper_repro.commands import notebooks


@pytest.mark.parametrize("name", notebooks.available())
def test_notebook_runs_at_smoke_size(name, tmp_path):
    out = notebooks.execute(name, smoke=True, timeout=900, out_dir=tmp_path / "executed")
    import nbformat

    nb = nbformat.read(out, as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
    metas = list((tmp_path / "results").rglob("meta.json"))
    assert metas, "the notebook wrote no results with meta.json"
    for m in metas:
        meta = json.loads(m.read_text())
        assert {"config", "versions", "git_commit", "wall_time_s"} <= set(meta)
    assert list((tmp_path / "results").rglob("*.png")), "no figure written"
