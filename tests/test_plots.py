"""The profile plot renders without clipping (issue 27, item 7): matplotlib's tight bounding box
of the figure, and every text in it, lies inside the figure; each point's label lies inside the
axes (clear of the spines) and no two labels overlap — for accuracy, cost-only and FLOPs-only
plots, with long model names and configuration names."""
from __future__ import annotations

import importlib

import matplotlib
import pytest

from slimify.deploy.measure import SwitchProfile
from slimify.deploy.profile_plot import profile_figure

measure = importlib.import_module("slimify.deploy.measure")  # the package attribute is the function

matplotlib.use("Agg")


def _result(model: str, latency: bool, accuracy: bool, config: str = "") -> object:
    rows = []
    for w in (0.25, 0.5, 0.75, 1.0):
        ms = 0.4 + 1.3 * w ** 2 if latency else None
        rows.append(SwitchProfile(w, int(2e6 * w ** 2), int(3e8 * w ** 2), int(6e8 * w ** 2), ms, ms, 10.0, 4.0,
                                  accuracy=60 + 15 * w if accuracy else None))
    if config:
        rows.insert(2, SwitchProfile(0.6, int(7e5), int(1.1e8), int(2.2e8), 0.9 if latency else None, 1.0, 9.0, 3.0,
                                     accuracy=None, config=config))
    return measure.ProfileResult(model, (8, 3, 224, 224), "cpu", 2, 20, 3, "export", "m", rows=rows)


CASES = {
    "accuracy vs latency": _result("resnet50", True, True),
    "cost only, long name": _result("VisionTransformerWithAnUnusuallyLongClassName", True, False),
    "accuracy vs FLOPs, a configuration": _result("mobilenetv3_large_100", False, True, "search-flops-0.50x"),
    "parameters vs GFLOPs": _result("TinyNet", False, False, "lean-0.60"),
}


@pytest.mark.parametrize("result", CASES.values(), ids=CASES.keys())
def test_nothing_is_clipped_and_labels_stay_off_the_axes(result) -> None:
    import matplotlib.pyplot as plt

    fig = profile_figure(result)
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        tight = fig.get_tightbbox(renderer)  # inches
        assert tight.x0 >= 0 and tight.y0 >= 0 and tight.x1 <= fig.get_figwidth() and \
            tight.y1 <= fig.get_figheight(), (tight, fig.get_size_inches())
        ax = fig.axes[0]
        texts = [ax.title, ax.xaxis.label, ax.yaxis.label, *ax.texts, ax.get_legend()]
        for text in texts:
            box = text.get_window_extent(renderer)
            assert fig.bbox.contains(box.x0, box.y0) and fig.bbox.contains(box.x1, box.y1), text
        inside = ax.get_window_extent(renderer).shrunk(0.999, 0.999)  # the plotting area, spines excluded
        labels = [t.get_window_extent(renderer) for t in ax.texts]
        assert len(labels) == len([r for r in result.rows if r.accuracy is not None] or result.rows)
        for label, text in zip(labels, ax.texts):
            assert inside.contains(label.x0, label.y0) and inside.contains(label.x1, label.y1), text.get_text()
        for i, a in enumerate(labels):
            for b in labels[i + 1:]:
                assert not a.overlaps(b), (a, b)
    finally:
        plt.close(fig)
