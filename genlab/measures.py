"""Per-image measures that several stages report, defined once. Torch-free.

``recon_error`` is what ``/reconstruct`` returns, what the translation experiment and the
report show, and (computed inside the score graph by :func:`genlab.models.base.recon_error`,
the same formula in torch) the ``recon_error`` anomaly-score component of the VAE and VAE-GAN.
"""

from __future__ import annotations

import numpy as np

RECON_ERROR = "recon_error"
RECON_ERROR_MEANING = (
    "mean squared difference between the uint8 image and its uint8 reconstruction, pixels scaled to [0, 1]"
)


# what score.onnx's anomaly_map output holds (computed inside the graph: genlab.export.onnx_export.anomaly_map)
ANOMALY_MAP_MEANING = "per pixel and channel: |image - reconstruction| of the uint8 pixels, scaled to [0, 1]"


def recon_error(images: np.ndarray, recons: np.ndarray) -> np.ndarray:
    """uint8 images and their uint8 reconstructions [N, C, H, W] -> float64 [N] (see RECON_ERROR_MEANING)."""
    diff = (np.asarray(images, np.float64) - np.asarray(recons, np.float64)) / 255.0
    return (diff**2).reshape(len(diff), -1).mean(axis=1)
