"""Step 3: DeepLabV3+ segmentation and test-time augmentation (paper 3.3, 3.4)."""
