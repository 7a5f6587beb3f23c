"""Notebook-friendly results (issue 19 item 9): figures returned, ax= honoured, no global style,
files only when asked; frames indexed by entry name; stable CSV dtypes; rich display."""

from __future__ import annotations

import os

import matplotlib
import pandas as pd
import pytest

from conftest import tiny_bert
import layerprobe as lp
from layerprobe.results.plots import cka_limits, plot_blocks
from layerprobe.results.trajectory import plot_trajectory


@pytest.fixture(scope="module")
def result(tokenizer, texts):
    torch = pytest.importorskip("torch")
    tuned = tiny_bert(0)
    with torch.no_grad():
        for p in tuned.encoder.layer[3].parameters():
            p.add_(0.05 * torch.randn_like(p))
    return lp.compare(tiny_bert(0), tuned, texts[:24], tokenizer, probe_options=lp.ProbeOptions(max_length=16), cka_options=lp.CKAOptions(n_boot=100))


def test_plot_returns_a_figure_without_touching_global_style_or_files(result, tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    monkeypatch.chdir(tmp_path)
    before = dict(matplotlib.rcParams)
    backend = matplotlib.get_backend()
    fig = result.plot(title="t")
    assert isinstance(fig, Figure) and len(fig.axes) == 3  # CKA, drift, and the predicted trade-off
    assert dict(matplotlib.rcParams) == before and matplotlib.get_backend() == backend  # no set_theme, no use()
    assert os.listdir(tmp_path) == []  # nothing saved unless asked
    low, high = fig.axes[0].get_ylim()
    assert low > 0.5 and high <= 1.01  # not 0..1.05: values near 1 are told apart
    fig = result.plot(path=tmp_path / "b.png")
    assert (tmp_path / "b.png").stat().st_size > 1000


def test_plot_draws_into_the_given_axes(result):
    from matplotlib.figure import Figure

    fig = Figure()
    ax1, ax2 = fig.subplots(1, 2)
    assert plot_blocks(result.to_dict(), ax=[ax1, ax2]) is fig
    assert ax1.get_ylabel().startswith("linear CKA") and ax2.get_ylabel().startswith("relative weight drift")
    single = Figure().subplots()
    plot_blocks(result.to_dict(), ax=single)
    assert single.get_ylabel().startswith("linear CKA")
    axes = Figure().subplots(1, 3)
    plot_blocks(result.to_dict(), ax=axes)
    assert axes[2].get_ylabel().startswith("predicted accuracy")


def test_tradeoff_plot_draws_every_candidate_and_the_tolerance(result):
    """One point per candidate prefix at (compute saved %, predicted %), the advised one ringed, the
    tolerance as a line; a comparison without predictions is refused in one line."""
    from layerprobe.results.plots import plot_tradeoff

    d = lp.Comparison.from_dict(result.to_dict()).to_dict()
    d["recommendation"] = lp.recommend(d, tolerance=0.02).to_dict()
    fig = plot_tradeoff(d)
    ax = fig.axes[0]
    cands = d["recommendation"]["candidates"]
    pts = ax.collections[-1].get_offsets()
    assert len(pts) == len(cands) == 4
    assert [round(float(y), 6) for _, y in pts] == [round(100 * c["predicted_rel_acc"], 6) for c in cands]
    assert [round(float(x), 6) for x, _ in pts] == [round(100 * c["compute_saved"], 6) for c in cands]
    assert any(ln.get_ydata()[0] == pytest.approx(98.0) for ln in ax.get_lines())  # the tolerance line
    sizes = list(ax.collections[-1].get_sizes())
    n_adv = len(d["recommendation"]["freeze"])
    assert sizes.count(140) == (1 if n_adv else 0)
    d["recommendation"]["candidates"] = []
    with pytest.raises(lp.LayerProbeError, match="no predictions"):
        plot_tradeoff(d)


def test_cka_axis_separates_the_values_that_matter():
    low, high = cka_limits([0.97, 1.0], 0.99)
    assert 0.95 < low < 0.97 and 1.0 < high < 1.01


def test_trajectory_plot_labels_the_freeze_and_tells_neighbours_apart(tmp_path):
    rows = [{"step": s, "block": b, "cka_to_start": 1 - 0.001 * s * (i + 1), "weight_drift": 0.001 * s,
             "frozen": i < 2 and s >= 20} for s in (0, 10, 20, 30) for i, b in enumerate(["embeddings", "block.0",
                                                                                          "block.1", "block.2"])]
    fig = plot_trajectory(pd.DataFrame(rows))
    lines = fig.axes[0].get_lines()
    colours = [matplotlib.colors.to_hex(ln.get_color()) for ln in lines[:4]]
    assert len(set(colours)) == 4
    assert any(t.get_text() == "embeddings, block.0 frozen" for t in fig.axes[0].texts)
    assert not list(tmp_path.iterdir())


def test_frame_is_indexed_by_entry_and_csv_floats_keep_a_decimal(result):
    from layerprobe.results.render import to_csv

    df = result.to_frame()
    assert df.index.name == "name" and list(df.index) == ["embeddings", "block.0", "block.1", "block.2", "block.3"]
    assert df["cka"].dtype == "float64" and df.loc["embeddings", "cka"] == pytest.approx(1.0)
    csv = to_csv(result).splitlines()
    assert csv[0].startswith("index,name,kind,cka")
    assert csv[1].split(",")[3] == "1.0"  # was "1": another dtype for the same column


def test_rich_display_highlights_frozen_rows(result):
    html = result._repr_html_()
    frozen = result.recommendation.freeze
    assert frozen and html.count("background-color:#dbe9f6") == len(frozen)
    rec = result.recommendation._repr_html_()
    assert rec.count("<tr") == 1 + len(result.blocks) and "FREEZE" in rec
