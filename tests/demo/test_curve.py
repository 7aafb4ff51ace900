"""visionr3.demo.curve: the windows the demo prints and the PNG it writes."""

import math

from PIL import Image

from visionr3.demo.curve import default_window, plot_accuracy, window_mean


def test_windows_skip_unlogged_steps():
    values = [0.25, None, 0.5, float("nan"), 0.75, 1.0]
    assert window_mean(values, 2) == 0.375 and window_mean(values, 2, last=True) == 0.875
    assert math.isnan(window_mean([None], 1))
    assert [default_window(n) for n in (1, 3, 8, 40)] == [1, 1, 2, 10]


def test_the_plot_is_a_png_with_every_arm(tmp_path):
    path = plot_accuracy({"tool": [[0.2, 0.4, 0.6], [0.3, 0.5, 0.9]], "no tool": [[0.25, 0.25, None]]},
                         tmp_path / "out" / "curve.png", title="t")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (768, 480)
