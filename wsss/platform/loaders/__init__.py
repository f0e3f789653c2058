"""Ray Data input pipelines: decoding, augmentation, class balancing."""
