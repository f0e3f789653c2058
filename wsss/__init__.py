"""wsss: weakly supervised semantic segmentation from image-level labels, on Ray."""

__version__ = "0.1.0"

import os

# albumentations otherwise checks the network for updates on import.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
