"""CAM extraction and label maps on networks and maps small enough to work out by hand."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wsss.stages.classification.backbones import CamClassifier
from wsss.stages.classification.cam import (
    cam_masks,
    cam_to_mask,
    confident_labels,
    grad_cam,
    ir_labels,
    multiscale_cam,
    normalise_cams,
    strided_size,
    upsample_cams,
)


def hand_classifier(features: nn.Module, weights: list[list[float]]) -> CamClassifier:
    """A CamClassifier whose 1×1 classifier has the given [K, C] weights."""
    weight = torch.tensor(weights)
    model = CamClassifier(features, nn.Sequential(), weight.shape[1], weight.shape[0], 1)
    with torch.no_grad():
        model.classifier.weight.copy_(weight[:, :, None, None])
    return model.eval()


def shift_right_classifier() -> CamClassifier:
    """features(x)[j] = x[j - 1] (0 at j = 0) on one channel; classes score 2·f and -f."""
    shift = nn.Conv2d(1, 1, kernel_size=(1, 3), padding=(0, 1), bias=False)
    with torch.no_grad():
        shift.weight.copy_(torch.tensor([1.0, 0.0, 0.0]).view(1, 1, 1, 3))
    return hand_classifier(shift, [[2.0], [-1.0]])


# Two feature channels on a 2×2 grid, and classifier rows (1, 2) and (-1, 0.5).
FEATURES = torch.tensor([[[1.0, 0.0], [2.0, -1.0]], [[0.0, 1.0], [1.0, 3.0]]])
CLASS_WEIGHTS = [[1.0, 2.0], [-1.0, 0.5]]
EXPECTED_CAMS = torch.tensor([[[1.0, 2.0], [4.0, 5.0]], [[-1.0, 0.5], [-1.5, 2.5]]])


def test_cam_is_the_classifier_applied_at_every_position():
    model = hand_classifier(nn.Identity(), CLASS_WEIGHTS)
    with torch.no_grad():
        torch.testing.assert_close(model.cam(FEATURES[None])[0], EXPECTED_CAMS)
        torch.testing.assert_close(model(FEATURES[None])[0], torch.tensor([3.0, 0.125]))


def test_flip_pass_is_flipped_back_and_relu_comes_before_the_sum():
    image = torch.tensor([[[1.0, -2.0, 3.0, 4.0]]])
    # Plain pass: f = [0, 1, -2, 3]. Flipped pass: f = [0, 4, 3, -2], flipped back [-2, 3, 4, 0].
    cams = multiscale_cam(shift_right_classifier(), image, scales=(1.0,), flip=True, stride=1)
    expected = torch.tensor([[[0.0, 8.0, 8.0, 6.0]], [[2.0, 0.0, 2.0, 0.0]]])
    torch.testing.assert_close(cams, expected)


def test_without_flip_only_the_plain_pass_counts():
    image = torch.tensor([[[1.0, -2.0, 3.0, 4.0]]])
    cams = multiscale_cam(shift_right_classifier(), image, scales=(1.0,), flip=False, stride=1)
    expected = torch.tensor([[[0.0, 2.0, 0.0, 6.0]], [[0.0, 0.0, 2.0, 0.0]]])
    torch.testing.assert_close(cams, expected)


def test_scales_and_flips_are_summed_not_averaged():
    model = hand_classifier(nn.Identity(), [[1.0]])
    image = torch.full((1, 4, 4), 0.25)  # bilinear resizing keeps a constant image constant
    cams = multiscale_cam(model, image, scales=(1.0, 0.5, 2.0), flip=True, stride=2)
    torch.testing.assert_close(cams, torch.full((1, 2, 2), 0.25 * 3 * 2))


def test_multiscale_equals_the_sum_of_single_passes():
    torch.manual_seed(0)
    model = hand_classifier(nn.Conv2d(3, 4, 3, stride=2, padding=1), torch.randn(2, 4).tolist())
    image = torch.randn(3, 12, 10)
    scales = (1.0, 0.5, 1.5)

    expected = torch.zeros(2, 3, 3)
    with torch.no_grad():
        for scale in scales:
            size = (round(12 * scale), round(10 * scale))
            scaled = F.interpolate(image[None], size=size, mode="bilinear", antialias=True)
            plain = F.relu(model.cam(scaled))
            flipped_back = F.relu(model.cam(scaled.flip(-1))).flip(-1)
            expected += F.interpolate(plain + flipped_back, size=(3, 3), mode="bilinear")[0]

    cams = multiscale_cam(model, image, scales=scales, flip=True, stride=4)
    torch.testing.assert_close(cams, expected)


def test_output_size_comes_from_the_stride_or_is_given():
    model = hand_classifier(nn.Identity(), [[1.0]])
    image = torch.rand(1, 10, 9)
    assert strided_size((10, 9), 4) == (3, 3)
    assert multiscale_cam(model, image, scales=(1.0, 0.5), stride=4).shape == (1, 3, 3)
    assert multiscale_cam(model, image, output_size=(10, 9)).shape == (1, 10, 9)


def test_multiscale_rejects_a_batch():
    with pytest.raises(ValueError, match=r"\[C, H, W\]"):
        multiscale_cam(hand_classifier(nn.Identity(), [[1.0]]), torch.zeros(1, 1, 4, 4))


CAMS = torch.tensor([[[0.0, 2.0, 4.0]], [[0.0, 1.0, 0.5]]])


def test_per_class_normalisation_divides_each_class_by_its_max():
    normalised = normalise_cams(CAMS, "per_class", eps=0.0)
    torch.testing.assert_close(normalised, torch.tensor([[[0.0, 0.5, 1.0]], [[0.0, 1.0, 0.5]]]))


def test_global_normalisation_divides_all_classes_by_the_overall_max():
    normalised = normalise_cams(CAMS, "global", eps=0.0)
    torch.testing.assert_close(normalised, torch.tensor([[[0.0, 0.5, 1.0]], [[0.0, 0.25, 0.125]]]))


def test_eps_keeps_an_all_zero_map_finite_and_maxima_below_one():
    cams = torch.cat([CAMS, torch.zeros(1, 1, 3)])
    normalised = normalise_cams(cams)
    assert torch.isfinite(normalised).all()
    assert (normalised[2] == 0).all()
    torch.testing.assert_close(normalised[0, 0, 2], torch.tensor(4.0 / (4.0 + 1e-5)))


def test_unknown_normalisation_mode_fails():
    with pytest.raises(ValueError, match="per_class"):
        normalise_cams(CAMS, "max")


def test_cam_masks_give_class_labels_and_hand_the_refiner_compact_ones():
    # Pixel 0: background 0.15 < class 3's 0.9 -> label 4; pixel 1: class 0's 0.5 -> label 1.
    cams = np.array([[[0.9, 0.1]], [[0.2, 0.5]]], np.float32)
    seen = []

    def swap_the_two_classes(compact: np.ndarray, n_labels: int) -> np.ndarray:
        seen.append((compact.tolist(), n_labels))
        return np.array([0, 2, 1])[compact]

    mask, refined = cam_masks(cams, [3, 0], 0.15, swap_the_two_classes)
    assert mask.tolist() == [[4, 1]]
    assert refined.tolist() == [[1, 4]]
    assert seen == [([[1, 2]], 3)]


def test_upsample_cams_is_bilinear_without_aligned_corners():
    # Output x of a 2 -> 4 resize samples input (x + 0.5) / 2 - 0.5: -0.25, 0.25, 0.75, 1.25,
    # clamped at the edges.
    up = upsample_cams(np.array([[[0.0, 1.0]]], np.float32), (1, 4))
    np.testing.assert_allclose(up, [[[0.0, 0.25, 0.75, 1.0]]])
    assert upsample_cams(np.zeros((0, 1, 2), np.float32), (3, 4)).shape == (0, 3, 4)


def test_grad_cam_of_the_last_features_is_cam_over_area():
    model = hand_classifier(nn.Identity(), CLASS_WEIGHTS)
    # d logit_c / dA_k = w_ck / 4 at every position, so Grad-CAM = relu(CAM_c) / 4.
    torch.testing.assert_close(
        grad_cam(model, FEATURES, "features", class_index=0),
        torch.tensor([[0.25, 0.5], [1.0, 1.25]]),
    )
    torch.testing.assert_close(
        grad_cam(model, FEATURES, "features", class_index=1),
        torch.tensor([[0.0, 0.125], [0.0, 0.625]]),
    )


def test_grad_cam_sees_activations_before_a_following_inplace_relu():
    identity = nn.Conv2d(1, 1, 1, bias=False)
    nn.init.ones_(identity.weight)
    model = hand_classifier(nn.Sequential(identity, nn.ReLU(inplace=True)), [[-2.0]])
    image = torch.tensor([[[1.0, -2.0], [3.0, 4.0]]])
    # logit = -2·mean(relu(A)): gradient -0.5 where A > 0, channel weight -1.5 / 4 = -0.375,
    # so Grad-CAM = relu(-0.375·A), non-zero only at the negative activation.
    torch.testing.assert_close(
        grad_cam(model, image, "features.0", class_index=0),
        torch.tensor([[0.0, 0.75], [0.0, 0.0]]),
    )
    assert all(p.grad is None for p in model.parameters())


def test_grad_cam_lists_layers_on_an_unknown_name():
    model = hand_classifier(nn.Sequential(nn.Conv2d(1, 1, 1)), [[1.0]])
    with pytest.raises(ValueError, match=r"unknown layer 'features\.7'") as error:
        grad_cam(model, torch.zeros(1, 2, 2), "features.7", 0)
    assert "features.0" in str(error.value)
    assert "classifier" in str(error.value)


# Maps of classes 4 and 1 (labels 5 and 2) on a 2×3 grid.
NORMALISED = np.array(
    [
        [[0.9, 0.1, 0.15], [0.5, 0.0, 0.3]],
        [[0.2, 0.12, 0.1], [0.6, 0.05, 0.3]],
    ],
    dtype=np.float32,
)


def test_cam_to_mask_labels_pixels_above_the_background_score():
    mask = cam_to_mask(NORMALISED, [4, 1], bg_threshold=0.15)
    # (0, 2) ties with background and stays background; (1, 2) ties two classes: the first wins.
    np.testing.assert_array_equal(mask, [[5, 0, 0], [2, 0, 5]])
    assert mask.dtype == np.uint8


def test_cam_to_mask_checks_its_inputs():
    with pytest.raises(ValueError, match="2 maps for 1 class"):
        cam_to_mask(NORMALISED, [4])
    with pytest.raises(ValueError, match="uint8"):
        cam_to_mask(NORMALISED, [4, 254])


def test_ir_labels_keep_confident_fg_and_bg_and_mark_the_rest_unsure():
    fg = np.array([[5, 0, 0, 2, 5]], dtype=np.uint8)
    bg = np.array([[5, 5, 0, 0, 2]], dtype=np.uint8)
    np.testing.assert_array_equal(ir_labels(fg, bg), [[5, 255, 0, 2, 5]])


ROW = np.array([[[0.5, 0.2, 0.03, 0.3]]], dtype=np.float32)  # one class, index 2 -> label 3


def test_confident_labels_leave_a_band_between_the_thresholds_unsure():
    labels = confident_labels(ROW, [2], conf_fg_thres=0.30, conf_bg_thres=0.05)
    np.testing.assert_array_equal(labels, [[3, 255, 0, 255]])


def test_confident_labels_refine_each_compact_map():
    calls = []

    def refine(labels: np.ndarray, n_labels: int) -> np.ndarray:
        calls.append((labels.copy(), n_labels))
        return np.ones_like(labels)

    labels = confident_labels(ROW, [2], refine=refine)
    assert [n for _, n in calls] == [2, 2]
    np.testing.assert_array_equal(calls[0][0], [[1, 0, 0, 0]])
    np.testing.assert_array_equal(calls[1][0], [[1, 1, 0, 1]])
    np.testing.assert_array_equal(labels, [[3, 3, 3, 3]])


@pytest.mark.parametrize(("fg", "bg"), [(0.05, 0.30), (0.3, 0.3)])
def test_confident_labels_reject_a_fg_threshold_not_above_bg(fg, bg):
    with pytest.raises(ValueError, match="must exceed conf_bg_thres"):
        confident_labels(ROW, [2], conf_fg_thres=fg, conf_bg_thres=bg)
