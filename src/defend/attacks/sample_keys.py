"""Keys that name an image by its content, for attacks whose draws follow the sample.

An attack that seeds each image's generator (:class:`~defend.attacks.torch_attack.SampleRNG`)
from ``(seed, sample_keys(x)[i])`` instead of a dataset position (:class:`~defend.attacks.dgde.
DGDE`) gives an image the same draws at any position of any batch, in any shard, and two
different images different draws. The image is the sample's identity wherever it comes from;
a dataset position is not (position 3 of the train split and position 3 of the test split
are the same number). Carlini et al. 2019 ("On Evaluating Adversarial Robustness") ask that a
detector not be trained on the very perturbations it is evaluated on: with draws keyed by the
image, a detector's training images never share their noise with the evaluation's images, and
a detector's data attacked with another seed (:func:`defend.detect.inputs.data_seed`) never
shares it on the same images either.

No ART here: the keys load without the attacks.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch


def sample_keys(x: np.ndarray | torch.Tensor) -> list[int]:
    """One key per image of ``x`` (N, ...): a 63-bit hash (SHA-256) of the image's shape and
    float32 bytes, what seeds its generator (module doc). Equal images get equal keys, and
    images differing in one bit get unrelated ones."""
    arr = x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    keys = []
    for image in arr:
        digest = hashlib.sha256(repr(image.shape).encode() + image.tobytes()).digest()
        keys.append(int.from_bytes(digest[:8], "little") >> 1)
    return keys
