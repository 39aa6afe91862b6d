"""Hallucination detectors for reconstruction models (issue 11, in progress).

* :mod:`defend.detect.features`: what a detector sees at deployment (the reconstruction,
  the zero-filled image, the measurement-space map).
* :mod:`defend.detect.examples`: clean and attacked samples with their region masks, by split.
* :mod:`defend.detect.evaluate`: the detector beside oracle and reference-free baselines.
* :mod:`defend.detect.detector`: the CNN (image score and pixel map), its training in the
  one loop, calibration at a false-positive rate, ``load_detector``.
"""
