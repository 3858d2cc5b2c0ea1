"""maskcl: unsupervised clothes-changing person re-identification with MaskCL.

The library never imports Sacred or DVC; ``experiments/`` wraps it for run tracking.
"""

__version__ = "0.1.0"
