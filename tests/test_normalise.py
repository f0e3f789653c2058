"""The networks' input: ImageNet statistics, channels first, contiguous."""

import torch

from wsss.stages.normalise import to_model_input


def test_to_model_input_normalises_with_imagenet_statistics():
    images = torch.full((1, 2, 2, 3), 255, dtype=torch.uint8)
    x = to_model_input(images)
    assert x.shape == (1, 3, 2, 2) and x.dtype == torch.float32
    expected = torch.tensor([(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225])
    assert torch.allclose(x[0, :, 0, 0], expected)


def test_to_model_input_is_contiguous_channels_first():
    # The channels-last strides of a permuted view reach 1x1 convolutions' weight gradients,
    # which DDP's contiguous buckets warned about on every step.
    x = to_model_input(torch.zeros((2, 4, 5, 3), dtype=torch.uint8))
    assert x.is_contiguous() and x.stride() == (60, 20, 5, 1)
