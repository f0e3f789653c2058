"""Pseudo masks from walked CAMs, on 16×16 stride-4 maps of 64×64 images worked out by hand.

Boundary columns of value 1 cut the map into regions no walk crosses (every affinity across
them is 0), so a constant CAM inside a region stays exactly that constant. Bilinear upsampling
×4 blends values only within 4 image pixels of a region's edge; assertions stay clear of that.
"""

import numpy as np
import pytest
import torch

from wsss.stages.irnet.pseudo_masks import propagate_to_mask

MAP_SIZE = 16
IMAGE_SIZE = (64, 64)


def split_by_columns(*columns: int) -> np.ndarray:
    """Boundary map [16, 16]: 1 on the given columns, 0 elsewhere."""
    boundary = np.zeros((MAP_SIZE, MAP_SIZE), np.float32)
    boundary[:, list(columns)] = 1.0
    return boundary


def test_mask_covers_the_whole_object_from_half_a_cam():
    top, bottom = 4, 12  # object: map rows and columns [4, 12), a ring of boundary around it
    boundary = np.zeros((MAP_SIZE, MAP_SIZE), np.float32)
    boundary[top - 1 : bottom + 1, top - 1 : bottom + 1] = 1.0
    boundary[top:bottom, top:bottom] = 0.0
    cams = np.zeros((1, MAP_SIZE, MAP_SIZE), np.float32)
    cams[0, top:bottom, top : (top + bottom) // 2] = 1.0  # the CAM found the left half only

    mask = propagate_to_mask(cams, [5], torch.from_numpy(boundary), IMAGE_SIZE)

    assert mask.dtype == np.uint8 and mask.shape == IMAGE_SIZE
    assert (mask[4 * top : 4 * bottom, 4 * top : 4 * bottom] == 5).all()
    outside = np.ones(IMAGE_SIZE, bool)
    outside[4 * (top - 1) : 4 * (bottom + 1), 4 * (top - 1) : 4 * (bottom + 1)] = False
    assert (mask[outside] == 0).all()


@pytest.mark.parametrize(("bg_threshold", "right_label"), [(0.3, 2), (0.5, 0)])
def test_bg_threshold_decides_the_weaker_region(bg_threshold, right_label):
    # Column 8 splits the map; after the walk and division by the maximum the left region
    # scores 1.0 and the right one 0.4: foreground below a 0.4 threshold, background above.
    cams = np.zeros((1, MAP_SIZE, MAP_SIZE), np.float32)
    cams[0, :, :8] = 1.0
    cams[0, :, 9:] = 0.4

    mask = propagate_to_mask(cams, [2], split_by_columns(8), IMAGE_SIZE, bg_threshold)

    assert (mask[:, :30] == 2).all()  # map columns [0, 8) are image columns [0, 32)
    assert (mask[:, 38:] == right_label).all()  # map columns [9, 16) are [36, 64)


def test_two_classes_get_their_dataset_indices():
    # Regions: map columns [0, 5) class A, [6, 10) no CAM, [11, 16) class B.
    cams = np.zeros((2, MAP_SIZE, MAP_SIZE), np.float32)
    cams[0, :, :5] = 1.0
    cams[1, :, 11:] = 0.6

    mask = propagate_to_mask(cams, [7, 3], split_by_columns(5, 10), IMAGE_SIZE)

    assert (mask[:, :18] == 7).all()
    assert (mask[:, 26:38] == 0).all()
    assert (mask[:, 46:] == 3).all()


def test_one_maximum_over_all_classes_keeps_a_weak_class_weak():
    cams = np.zeros((2, MAP_SIZE, MAP_SIZE), np.float32)
    cams[0, :, :8] = 1.0
    cams[1, :, 9:] = 0.4  # 1.0 if each class were divided by its own maximum

    mask = propagate_to_mask(cams, [1, 4], split_by_columns(8), IMAGE_SIZE, bg_threshold=0.5)

    assert (mask[:, :30] == 1).all()
    assert (mask[:, 38:] == 0).all()


def test_mask_is_cropped_to_an_image_size_not_divisible_by_4():
    cams = np.ones((1, MAP_SIZE, MAP_SIZE), np.float32)
    mask = propagate_to_mask(cams, [9], split_by_columns(), (62, 61))
    assert mask.shape == (62, 61)
    assert (mask == 9).all()


def test_no_classes_give_an_all_background_mask():
    cams = np.zeros((0, MAP_SIZE, MAP_SIZE), np.float32)
    mask = propagate_to_mask(cams, [], split_by_columns(), IMAGE_SIZE)
    assert mask.dtype == np.uint8 and mask.shape == IMAGE_SIZE
    assert not mask.any()


@pytest.mark.parametrize(
    ("n_maps", "class_indices", "image_size"),
    [(1, [0], IMAGE_SIZE), (2, [1], IMAGE_SIZE), (1, [1], (72, 64))],
)
def test_inconsistent_inputs_are_rejected(n_maps, class_indices, image_size):
    cams = np.zeros((n_maps, MAP_SIZE, MAP_SIZE), np.float32)
    with pytest.raises(ValueError):
        propagate_to_mask(cams, class_indices, split_by_columns(), image_size)
