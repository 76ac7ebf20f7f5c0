"""`saliency-jax demo --quick` runs end to end and its index.html references files that exist."""

import re

import pytest

from saliency_jax import cli


def test_demo_quick_writes_a_complete_index(model, tmp_path, capsys):
    pytest.importorskip("cv2")
    out = tmp_path / "demo"
    assert cli.main(["demo", "--out", str(out), "--quick"]) == 0
    index = out / "index.html"
    page = index.read_text()
    sources = re.findall(r'src="([^"]+)"', page)
    # photos, maps, overlays, class models (two presets), boxes, feature grids (two rules)
    assert len(sources) >= 2 * (1 + 3 + 3) + 2 * 2 + 2 + 2 * 2
    assert len([s for s in sources if s.startswith("features_block5_ch") and s.endswith("_guided.png")]) == 2
    assert len([s for s in sources if s.startswith("features_block5_ch") and s.endswith("_deconvnet.png")]) == 2
    assert len([s for s in sources if s.startswith("class_model_lucid_")]) == 2
    assert len([s for s in sources if s.startswith("class_model_paper_")]) == 2
    missing = [s for s in sources if not (out / s).is_file()]
    assert not missing
    assert "Egyptian cat" in page and "espresso" in page
    assert re.search(r"chelsea: vanilla \(\d+, \d+, \d+, \d+\)", page)  # the paper's box, seeded by the gradient
    assert str(index.resolve()) in capsys.readouterr().out
