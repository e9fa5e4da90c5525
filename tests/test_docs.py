"""docs/ pages show the figures of the committed results, not copies that could drift from them."""
from benchmarks import report


def test_every_generated_table_in_docs_matches_its_json(capsys):
    assert report.main(["--check"]) == 0, capsys.readouterr().out + " (run `make docs`)"


def test_a_changed_figure_is_caught(tmp_path, monkeypatch):
    page = tmp_path / "page.md"
    page.write_text("<!-- generated from vq_vs_vae.json: vq_vs_vae -->\n| stale |\n<!-- end generated -->\n")
    monkeypatch.setattr(report, "DOCS", tmp_path)
    assert report.main(["--check"]) == 1
    assert report.main([]) == 0 and "| stale |" not in page.read_text() and "VQ-VAE" in page.read_text()
