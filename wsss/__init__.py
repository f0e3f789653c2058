"""wsss: weakly supervised semantic segmentation from image-level labels, on Ray."""

__version__ = "0.1.0"

import os

# albumentations otherwise checks the network for updates on import.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
# Every Ray cluster the platform starts requires Ray's auth token (Ray's core ports bind every
# interface). Ray reads the mode when it is imported, so it is set before anything imports
# Ray; RAY_AUTH_MODE=disabled in the environment joins a cluster that runs without tokens.
os.environ.setdefault("RAY_AUTH_MODE", "token")
