"""Pure UI building blocks: figures (traces, colours, highlighted ids), thumbnails, cards, metrics."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest
from PIL import Image

from components.cards import Card, card_html, score_bar_html
from components.colors import (
    CLASS_PALETTE,
    DIVERGING,
    OPPONENT,
    PROPONENT,
    class_color,
    class_colors,
    contrast_ratio,
    text_color,
)
from components.compare_figures import (
    agreement,
    method_scatter_figure,
    overlap_counts,
    sign_overlap,
)
from components.figures import (
    OVERLAY_NAMES,
    embedding_figure,
    is_click,
    overlay_traces,
    rank_scale,
    selected_ids,
    with_overlay,
    zoom_box,
)
from components.images import data_uri, png_bytes, to_uint8, upscale
from components.prob_bars import MAX_NAMED, TOP, probability_bars_html

N_TRAIN, N_TEST = 30, 10


@pytest.fixture
def toy():
    rng = np.random.default_rng(0)
    xy = rng.normal(size=(N_TRAIN + N_TEST, 2)).astype(np.float32)
    labels = np.arange(N_TRAIN + N_TEST) % 3
    return xy, labels


def test_class_mode_one_trace_per_class_and_split_with_ids(toy):
    xy, labels = toy
    fig = embedding_figure(xy, labels, N_TRAIN, ["a", "b", "c"])
    assert len(fig.data) == 6  # 3 classes x (train, test)
    seen = []
    for tr in fig.data:
        ids = np.asarray(tr.customdata)[:, 0]
        seen += ids.tolist()
        c = labels[ids]
        assert (c == c[0]).all()
        assert tr.marker.color == class_color(int(c[0]))
        is_test = ids >= N_TRAIN
        assert is_test.all() or (~is_test).all()
        assert tr.marker.symbol == ("diamond" if is_test.all() else "circle")
        np.testing.assert_allclose(tr.x, xy[ids, 0])
        # second column is the index within the split
        np.testing.assert_array_equal(np.asarray(tr.customdata)[:, 1], np.where(is_test, ids - N_TRAIN, ids))
    assert sorted(seen) == list(range(N_TRAIN + N_TEST))
    assert all(tr.type == "scattergl" for tr in fig.data)


def test_influence_mode_is_zero_centred_and_sized_by_magnitude(toy):
    xy, labels = toy
    scores = np.linspace(-1.0, 3.0, N_TRAIN).astype(np.float32)
    fig = embedding_figure(xy, labels, N_TRAIN, ["a", "b", "c"], scores=scores, scale="linear")
    train = fig.data[0]
    m = train.marker
    assert m.cmid == 0.0 and m.cmin == -3.0 and m.cmax == 3.0
    assert [list(x) for x in m.colorscale][0][1] == DIVERGING[0][1]
    ids = np.asarray(train.customdata)[:, 0].astype(int)
    np.testing.assert_allclose(np.asarray(m.color), scores[ids])
    size = np.asarray(m.size)
    assert size[np.argmax(np.abs(scores[ids]))] == size.max()
    assert np.all(np.diff(np.abs(scores[ids])) >= 0)  # most influential drawn last
    assert sorted(np.asarray(fig.data[1].customdata)[:, 0]) == list(range(N_TRAIN, N_TRAIN + N_TEST))
    np.testing.assert_allclose(np.asarray(train.customdata)[:, 2], scores[ids])  # the score, for the hover
    with pytest.raises(ValueError):
        embedding_figure(xy, labels, N_TRAIN, ["a", "b", "c"], scores=scores[:-1])


def test_rank_scale_spreads_colours_over_the_samples(toy):
    """A few extreme scores no longer leave everything else grey: colours follow the rank of |score|."""
    xy, labels = toy
    scores = np.zeros(N_TRAIN, dtype=np.float32)
    scores[:10] = [-500.0, -1.0, -0.5, -0.1, 0.01, 0.02, 0.3, 0.4, 2.0, 900.0]
    q = rank_scale(scores)
    np.testing.assert_allclose(q[:10], np.array([-9, -7, -6, -3, 1, 2, 4, 5, 8, 10]) / 10)
    assert (q[10:] == 0).all()
    assert (np.sign(q) == np.sign(scores)).all()
    fig = embedding_figure(xy, labels, N_TRAIN, ["a", "b", "c"], scores=scores)
    m = fig.data[0].marker
    assert m.cmin == -1.0 and m.cmax == 1.0 and m.cmid == 0.0
    ids = np.asarray(fig.data[0].customdata)[:, 0].astype(int)
    np.testing.assert_allclose(np.asarray(m.color), q[ids])
    assert list(m.colorbar.tickvals) == [-1.0, -0.9, -0.5, 0.0, 0.5, 0.9, 1.0]
    assert m.colorbar.ticktext[-1] == "+9e+02" and m.colorbar.ticktext[3] == "0"
    with pytest.raises(ValueError, match="scale"):
        embedding_figure(xy, labels, N_TRAIN, ["a", "b", "c"], scores=scores, scale="log")


def test_zoom_box_and_overlay_zoom(toy):
    xy, labels = toy
    box = zoom_box(xy, [0, 1, 2], pad=0.0)
    pts = xy[[0, 1, 2]]
    assert box[0] <= pts[:, 0].min() and box[1] >= pts[:, 0].max()
    assert box[2] <= pts[:, 1].min() and box[3] >= pts[:, 1].max()
    assert zoom_box(xy, []) is None
    base = embedding_figure(xy, labels, N_TRAIN, ["a", "b", "c"])
    fig = with_overlay(base, [], box)
    assert list(fig.layout.xaxis.range) == pytest.approx([box[0], box[1]])
    assert fig.layout.uirevision != base.layout.uirevision and base.layout.xaxis.range is None


def test_overlay_star_and_links(toy):
    xy, _ = toy
    focus = N_TRAIN + 4
    tr = overlay_traces(xy, N_TRAIN, focus, proponents=[1, 2], opponents=[7], focus_label="test #4")
    assert [t.name for t in tr] == list(OVERLAY_NAMES)
    pro_links, opp_links, linked, star = tr
    assert star.marker.symbol == "star" and star.customdata[0][0] == focus
    assert (star.x[0], star.y[0]) == pytest.approx((xy[focus, 0], xy[focus, 1]))
    assert pro_links.line.color == PROPONENT and opp_links.line.color == OPPONENT
    assert len(pro_links.x) == 6 and pro_links.x[2] is None and pro_links.x[1] == pytest.approx(xy[1, 0])
    assert np.asarray(linked.customdata)[:, 0].tolist() == [1, 2, 7]
    assert list(linked.marker.color) == [PROPONENT, PROPONENT, OPPONENT]
    assert overlay_traces(xy, N_TRAIN, None) == []


def test_with_overlay_keeps_base_untouched(toy):
    xy, labels = toy
    base = embedding_figure(xy, labels, N_TRAIN, ["a", "b", "c"])
    fig = with_overlay(base, overlay_traces(xy, N_TRAIN, N_TRAIN, [0], [1]))
    assert len(base.data) == 6 and len(fig.data) == 10
    assert fig.layout.uirevision == "embedding"


def test_selection_event_parsing():
    assert selected_ids(None) == [] and not is_click(None)
    click = {"selection": {"points": [{"customdata": [42, 2], "curve_number": 3}], "box": [], "lasso": []}}
    assert selected_ids(click) == [42] and is_click(click)
    lasso = {"selection": {"points": [{"customdata": [5, 5]}, {"customdata": [9, 9]}, {"customdata": [5, 5]},
                                      {"x": 1}], "lasso": [{"x": [0, 1], "y": [0, 1]}]}}
    assert selected_ids(lasso) == [5, 9] and not is_click(lasso)


def test_selection_event_parsing_browser_payload():
    """What chromium really sends: numpy customdata rows arrive as ``{"0": id, "1": index}``."""
    click = {"selection": {"points": [{"curve_number": 0, "point_index": 3, "customdata": {"0": 976, "1": 976}}],
                           "point_indices": [3], "box": [], "lasso": []}}
    assert selected_ids(click) == [976] and is_click(click)
    box = {"selection": {"points": [{"customdata": {"0": 1800, "1": 3}}, {"customdata": 7}, {"customdata": None},
                                    {"customdata": {"1": 2}}], "box": [{"x": [0, 1], "y": [0, 1]}], "lasso": []}}
    assert selected_ids(box) == [1800, 7] and not is_click(box)


_BAR = re.compile(r'<div class="ie-prob" title="class ([^"]*): ([\d.]+)"[^>]*><div[^>]*>(\w*)</div>'
                  r'<div class="ie-prob-bar" style="[^"]*height:([\d.]+)%;[^"]*background:(#\w+);([^"]*)"')


def test_probability_bars_highlight_pred_and_true():
    """One bar per class, its height the probability; the prediction in its class colour, the true
    class outlined, both named above their bar (the encoding of the plotly chart they replace)."""
    h = probability_bars_html(np.array([0.1, 0.7, 0.2]), ["x", "y", "z"], true=2, pred=1)
    bars = _BAR.findall(h)
    assert [b[0] for b in bars] == ["x", "y", "z"] and [float(b[1]) for b in bars] == [0.1, 0.7, 0.2]
    assert [float(b[3]) for b in bars] == pytest.approx([100 * q / TOP for q in (0.1, 0.7, 0.2)], abs=0.01)
    assert [b[2] for b in bars] == ["", "pred", "true"]
    assert bars[1][4] == class_color(1) and bars[0][4] != class_color(0) and bars[2][4] != class_color(2)
    assert ["inset" in b[5] for b in bars] == [False, False, True]
    assert "y 70.0%" in h  # the accessible label names the top classes
    # a hostile class name stays text; with many classes only the true and predicted ones are named
    names = [f"c{i}" for i in range(MAX_NAMED + 5)]
    names[3] = "<img src=x onerror=alert(1)>"
    h = probability_bars_html(np.full(len(names), 1 / len(names)), names, true=3, pred=7)
    assert "<img" not in h and "&lt;img" in h and len(_BAR.findall(h)) == len(names)
    assert ">c7</div>" in h and ">c8</div>" not in h


def test_sign_overlap_splits_agreement_from_a_sign_flip():
    """A proponent of A that is an opponent of B (e.g. exact -48.2 vs tracin +1.41) is no agreement."""
    ov = sign_overlap(pro_a=[1, 2, 3], opp_a=[7, 8, 9], pro_b=[2, 9, 4], opp_b=[8, 3, 5])
    assert ov.same_pro == [2] and ov.same_opp == [8]
    assert ov.pro_a_opp_b == [3] and ov.opp_a_pro_b == [9] and ov.opposite == [3, 9] and ov.same == [2, 8]
    assert overlap_counts(ov, 3, 3) == {"Proponents shared": "1 / 3", "Opponents shared": "1 / 3", "Opposite sign": "2"}
    assert agreement(2, [2, 9, 4], [8, 3, 5], "pro") == "✓ same sign"
    assert agreement(3, [2, 9, 4], [8, 3, 5], "pro") == "✗ opposite sign"
    assert agreement(1, [2, 9, 4], [8, 3, 5], "pro") == ""
    assert agreement(9, [2, 9, 4], [8, 3, 5], "opp") == "✗ opposite sign"


def test_method_scatter_groups_by_sign():
    a, b = np.arange(10.0), np.arange(10.0)[::-1].copy()
    fig = method_scatter_figure(a, b, "A", "B", pro_a=[0, 1], opp_a=[5], pro_b=[1, 5], opp_b=[6])
    by_name = {t.name: list(t.customdata) if t.customdata is not None else None for t in fig.data}
    assert by_name["same sign in both top-k"] == [1]
    assert by_name["opposite sign (proponent in one, opponent in the other)"] == [5]
    assert by_name["A top-k only"] == [0] and by_name["B top-k only"] == [6]
    flip = next(t for t in fig.data if t.name.startswith("opposite"))
    assert list(flip.x) == [5.0] and list(flip.y) == [4.0] and flip.marker.symbol == "x"


def test_images_gray_and_rgb_upscale_crisply():
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8)
    im = upscale(gray, 96)
    assert im.size == (96, 96) and im.mode == "L"
    arr = np.asarray(im)
    assert (arr[:12, :12] == 0).all() and (arr[:12, 12:24] == 1).all()  # nearest neighbour: blocks
    rgb = np.zeros((5, 10, 3), np.uint8)
    rgb[..., 0] = 255
    im = upscale(rgb, 40)
    assert im.size == (40, 20) and im.mode == "RGB" and np.asarray(im)[0, 0].tolist() == [255, 0, 0]
    assert to_uint8(np.ones((3, 4, 4), np.float32)).shape == (4, 4, 3)  # channels-first float
    assert to_uint8(np.zeros((4, 4, 1), np.uint8)).shape == (4, 4)
    with pytest.raises(ValueError):
        to_uint8(np.zeros((4, 4, 2), np.uint8))
    big = upscale(np.zeros((300, 200), np.uint8), 96)
    assert max(big.size) == 96
    png = png_bytes(gray, 32)
    assert Image.open(io.BytesIO(png)).size == (32, 32)
    uri = data_uri(gray, 32)
    assert uri.startswith("data:image/png;base64,") and base64.b64decode(uri.split(",", 1)[1]) == png


def test_feature_strips_and_rgb_thumbnails_stay_crisp():
    strip = np.array([[0, 85, 170, 255]], np.uint8)  # a table sample [1, d]
    im = upscale(strip, 96)
    assert im.size == (96, 24) and im.mode == "L"
    arr = np.asarray(im)
    assert set(np.unique(arr).tolist()) == {0, 85, 170, 255}  # no interpolated greys
    assert (arr[:, :24] == 0).all() and (arr[:, 72:] == 255).all()
    wide = upscale(np.tile(np.array([[0, 255]], np.uint8), (1, 100)), 96)  # [1, 200]: shrunk, still visible
    assert wide.size == (96, 12) and set(np.unique(np.asarray(wide)).tolist()) <= {0, 255}
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[4:12, 4:12] = (200, 30, 30)
    big = np.asarray(upscale(rgb, 224))
    assert big.shape == (224, 224, 3)  # factor 14
    assert big[4 * 14, 4 * 14].tolist() == [200, 30, 30] and big[4 * 14 - 1, 4 * 14 - 1].tolist() == [0, 0, 0]
    assert len({tuple(p) for p in big.reshape(-1, 3).tolist()}) == 2


def test_cards_and_score_bars():
    bar = score_bar_html(-0.5, 2.0)
    assert "width:25.0%" in bar and OPPONENT in bar and "-0.5" in bar
    assert "width:100.0%" in score_bar_html(5.0, 1.0) and PROPONENT in score_bar_html(5.0, 1.0)
    card = Card(key="k", value=3, image_uri="data:image/png;base64,AAAA", button="train #3", alt="train #3 <x>",
                lines=("label 1",), score=1.0, scale=2.0, badges=("label ≠ 2",))
    h = card_html(card)
    assert 'alt="train #3 &lt;x&gt;"' in h and "label ≠ 2" in h and "width:50.0%" in h
    assert "ie-badge" not in card_html(Card("k", 1, "u", "b", "a"))


def test_chip_text_contrast_is_readable_on_every_class_colour():
    """WCAG AA for text: >= 4.5:1; white on the yellow class (#edc948) was 1.6:1."""
    assert contrast_ratio("#ffffff", "#000000") == pytest.approx(21.0)
    assert contrast_ratio("#edc948", "#ffffff") == pytest.approx(1.6, abs=0.05)
    assert text_color("#edc948") == "#000000" and text_color("#1f77b4") == "#ffffff"
    for c in CLASS_PALETTE:
        assert contrast_ratio(c, text_color(c)) >= 4.5, c


def test_colors():
    assert class_colors(3) == [class_color(0), class_color(1), class_color(2)]
    assert class_color(20) == class_color(0)
