"""wsss: weakly supervised semantic segmentation from image-level labels, on Ray."""

__version__ = "0.1.0"
