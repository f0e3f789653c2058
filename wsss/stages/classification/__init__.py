"""Step 1: multi-label classifier backbones and class activation maps (paper 3.1)."""
