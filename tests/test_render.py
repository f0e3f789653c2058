"""Mask colours, overlays that leave background and ignore alone, panel rows, and the legend
that names the classes a mask draws."""

import numpy as np
import pytest

from wsss.stages.segmentation.render import (
    LEGEND_ROW,
    LEGEND_SWATCH,
    colorize,
    legend,
    overlay,
    side_by_side,
    with_legend,
)

CLASSES = ["background", "dog", "cat", "a class with a long name"]


def test_colorize_uses_voc_colours():
    mask = np.array([[0, 1], [15, 255]], dtype=np.uint8)
    expected = np.array(
        [[[0, 0, 0], [128, 0, 0]], [[192, 128, 128], [224, 224, 192]]], dtype=np.uint8
    )
    np.testing.assert_array_equal(colorize(mask), expected)


def test_colorize_rejects_non_uint8_masks():
    with pytest.raises(ValueError, match="uint8"):
        colorize(np.zeros((2, 2), dtype=np.int64))


@pytest.fixture
def image():
    return np.full((2, 2, 3), (100, 152, 200), dtype=np.uint8)


MASK = np.array([[0, 255], [1, 2]], dtype=np.uint8)


def test_overlay_leaves_background_and_ignore_untouched(image):
    result = overlay(image, MASK, alpha=0.8)
    np.testing.assert_array_equal(result[0, 0], image[0, 0])
    np.testing.assert_array_equal(result[0, 1], image[0, 1])


@pytest.mark.parametrize(
    ("alpha", "class_1", "class_2"),
    [
        # class 1 is (128, 0, 0), class 2 is (0, 128, 0); image pixel (100, 152, 200)
        (0.5, (114, 76, 100), (50, 140, 100)),
        (0.25, (107, 114, 150), (75, 146, 150)),
    ],
)
def test_overlay_blends_class_pixels_by_alpha(image, alpha, class_1, class_2):
    result = overlay(image, MASK, alpha=alpha)
    assert tuple(result[1, 0]) == class_1
    assert tuple(result[1, 1]) == class_2
    assert result.dtype == np.uint8


def test_overlay_does_not_modify_its_input(image):
    before = image.copy()
    overlay(image, MASK)
    np.testing.assert_array_equal(image, before)


def test_overlay_rejects_a_mask_of_another_size(image):
    with pytest.raises(ValueError, match="does not match"):
        overlay(image, np.zeros((3, 2), dtype=np.uint8))


def test_side_by_side_places_panels_between_white_separators():
    panels = [np.full((4, width, 3), value, dtype=np.uint8) for width, value in [(5, 10), (6, 20)]]
    row = side_by_side(*panels, separator=2)
    assert row.shape == (4, 5 + 2 + 6, 3)
    np.testing.assert_array_equal(row[:, :5], panels[0])
    assert (row[:, 5:7] == 255).all()
    np.testing.assert_array_equal(row[:, 7:], panels[1])


def test_side_by_side_of_n_equal_panels_is_n_widths_plus_separators():
    panel = np.zeros((3, 8, 3), dtype=np.uint8)
    assert side_by_side(panel, panel, panel, separator=1).shape == (3, 3 * 8 + 2, 3)
    assert side_by_side(panel).shape == panel.shape


def test_side_by_side_rejects_panels_of_different_heights():
    with pytest.raises(ValueError, match="heights differ"):
        side_by_side(np.zeros((3, 4, 3), np.uint8), np.zeros((5, 4, 3), np.uint8))


def test_legend_has_a_line_per_class_with_its_colour_swatch():
    strip = legend([1, 3], CLASSES)
    assert strip.dtype == np.uint8 and strip.shape[0] == 2 * LEGEND_ROW
    # dog is VOC colour 1 (128, 0, 0), class 3 is (128, 128, 0): a filled square on each line.
    for row, colour in enumerate([(128, 0, 0), (128, 128, 0)]):
        line = strip[row * LEGEND_ROW : (row + 1) * LEGEND_ROW]
        assert (line == colour).all(axis=-1).sum() == (LEGEND_SWATCH - 2) ** 2
    # The text is drawn right of the swatch, dark on white.
    assert (strip[:, LEGEND_SWATCH + 2 :] < 100).all(axis=-1).any()


def test_legend_grows_with_the_longest_name():
    assert legend([3], CLASSES).shape[1] > legend([1], CLASSES).shape[1]


def test_legend_of_no_class_says_so_on_one_line():
    strip = legend([], CLASSES)
    assert strip.shape[0] == LEGEND_ROW and (strip < 100).all(axis=-1).any()


def test_with_legend_names_the_object_classes_of_the_mask_below_the_panel():
    panel = np.full((8, 4, 3), 7, dtype=np.uint8)
    mask = np.array([[0, 2], [255, 2]], dtype=np.uint8)  # background and ignore are no line
    result = with_legend(panel, mask, CLASSES)
    strip = legend([2], CLASSES)
    assert result.shape == (8 + LEGEND_ROW, strip.shape[1], 3)
    np.testing.assert_array_equal(result[:8, :4], panel)
    assert (result[:8, 4:] == 255).all()  # the panel is padded with white to the legend
    np.testing.assert_array_equal(result[8:], strip)
