"""Every notebook runs top to bottom at smoke size, shows its figures inline and writes its
results (with the deterministic meta.json) outside results/."""

import json

import nbformat
import pytest
from conftest import shared_data_dir

from paper_repro.commands import notebooks

# Notebooks whose experiments need no real data: they must show figures anywhere.
NO_DATA_NEEDED = {"quantizers", "hopfield", "storage", "explorer"}


@pytest.mark.parametrize("name", notebooks.available())
def test_notebook_runs_at_smoke_size(name, tmp_path):
    out = notebooks.execute(name, smoke=True, timeout=900, out_dir=tmp_path / "executed")
    nb = nbformat.read(out, as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    if name in NO_DATA_NEEDED or shared_data_dir() is not None:
        assert images, "the notebook showed no figure inline"
        metas = list((tmp_path / "results").rglob("meta.json"))
        assert metas, "the notebook wrote no results with meta.json"
        for m in metas:
            meta = json.loads(m.read_text())
            assert {"config", "config_hash", "numerics_version", "versions",
                    "computed_by"} == set(meta) - {"n_rows", "fit_quality"}
    assert not [c for c in nb.cells if c.cell_type == "markdown" and "SCIENCE" in c.source]
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.lstrip().startswith("#")
