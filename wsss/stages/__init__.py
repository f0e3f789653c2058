"""The three WSSS algorithms as plain PyTorch/NumPy code with explicit inputs and outputs.

A stage never imports Ray Tune or MLflow: the platform wires stages to Ray and tracking.
"""
