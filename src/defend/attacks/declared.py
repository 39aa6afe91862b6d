"""Each plain attack's parameters, declared once (:class:`~defend.attacks.params.Param`).

The attack classes take their ``PARAMS`` from here; so do ``defend attack``'s options, which
the command line builds at start-up: this module imports neither torch nor ART, so that
``defend --help`` and a one-line error need neither (importing both takes seconds).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from defend.attacks.params import COMMON, Param

#: the target region's shapes (:data:`defend.attacks.region.REGIONS`; a test keeps them equal)
REGIONS = ("line", "square", "disk")
#: the losses seg-fgsm raises: :data:`defend.losses.SEG_LOSSES` and the model's own training
#: loss (a test keeps them equal)
SEG_ATTACK_LOSSES = ("bce", "dice", "dicefocal", "training")


def parse_size(value: str) -> tuple[int, int]:
    """:func:`defend.attacks.region.parse_size`, its module (torch) loaded when used."""
    from defend.attacks.region import parse_size as parse  # torch: only when a size is given

    return parse(value)


def read_mask(path: str | Path) -> Any:
    """:func:`defend.attacks.region.read_mask`, its module (torch) loaded when used."""
    from defend.attacks.region import read_mask as read  # torch: only when a mask is given

    return read(path)


HALLUCINATION = COMMON + (
    Param("eps", 0.1, "perturbation budget: l-inf per real component, or l2 per coil",
          float, "relative (see eps_mode) or k-space units", low=0, open_low=True),
    Param("eps_mode", "relative", "what eps is measured in", str,
          choices=("relative", "absolute")),
    Param("norm", "inf", "the budget's norm (2: per coil)", str, choices=("inf", "2")),
    Param("step", 0.1, "step size (the paper: eps 1e-6, step 1e-7)", float,
          "fraction of eps", low=0, open_low=True),
    Param("max_iter", 150, "iterations (the paper: 150)", int, "steps", low=1),
    Param("patience", 10, "stop a sample whose loss has not improved for this many "
          "iterations (the paper: 10; 0: never)", int, "steps", low=0),
    Param("part", "real", "which k-space parts move (the paper: real)", str,
          choices=("real", "complex")),
    Param("region", "line", "the target region's shape", str, choices=REGIONS),
    Param("region_size", None, "the region's size, WxH or N (default: the paper's, "
          "scaled to the image)", object, "px", parse=parse_size),
    Param("region_center", None, "the region's centre, XxY (default: the image centre)",
          object, "px", parse=parse_size),
    Param("region_mask", None, "a .npy or image file with the region mask (overrides "
          "region)", object, parse=read_mask),
    Param("alpha", 0.3, "target contrast (the paper: 0.3)", object,
          "fraction of the clean image's range", cli_type=float),
    Param("weight_inside", 1.0, "loss weight inside the region", float, low=0),
    Param("weight_outside", 1.0, "loss weight outside the region", float, low=0),
    Param("random_start", True, "start from uniform noise of one step's size (as the "
          "paper)", bool),
    Param("image_metrics", True, "add image metrics and success to the report", bool,
          cli=False),
)  # fmt: skip

SEG_FGSM = COMMON + (
    Param("eps", 0.008, "l-inf budget (the seed: 0.007-0.009)", float, "[0, 1] pixel units",
          low=0, high=1, open_low=True),
    Param("loss", "bce", "the loss the attack raises", str, choices=SEG_ATTACK_LOSSES),
    Param("target", "auto", "what the loss compares with: the truth y, the model's own "
          "clean prediction, or auto (truth when y is given)", str,
          choices=("truth", "prediction", "auto")),
    Param("max_iter", 1, "steps: 1 is FGSM, more is PGD from a random start", int,
          "steps", low=1),
    Param("step", None, "step size (default 1 for FGSM, 2.5 / max_iter for PGD, as Madry "
          "et al.)", float, "fraction of eps", low=0, open_low=True, optional=True),
    Param("threshold", 0.5, "probability above which a pixel is foreground", float,
          "probability", low=0, high=1, open_low=True, open_high=True),
)  # fmt: skip

DGDE = COMMON + (
    Param("batch_size", 8, "images attacked together (results do not depend on it)", int,
          "images", low=1),
    Param("noise_max", 1.0, "strongest noise tried", float, "fraction (see above)",
          low=0, high=1, open_low=True),
    Param("noise_min", 0.01, "weakest noise tried", float, "fraction (see above)",
          low=0, high=1, open_low=True),
    Param("noise_levels", 12, "noise strengths tried, geometric from noise_min to "
          "noise_max", int, low=1),
    Param("noise_tries", 8, "noise draws per strength (scored in one batch)", int, low=1),
    Param("noise_blocks", (1, 2, 4, 8), "salt-and-pepper block sizes, one per try in turn",
          tuple, "px a side", low=1, cli=False),
    Param("population", 8, "DE population per image", int, low=4),
    Param("F", 0.5, "DE mutation factor", float, low=0, high=2, open_low=True, flag="--F"),
    Param("CR", 0.7, "DE crossover probability", float, low=0, high=1, flag="--CR"),
    Param("max_iter", 20, "DE generations at most (0: no DE)", int, "generations", low=0),
    Param("patience", 2, "DE generations without a smaller solution before stopping", int,
          "generations", low=1),
    Param("prune", True, "prune the DE's support by groups down to single pixels", bool),
    Param("prune_groups", 12, "group removals tried per image in one pruning batch", int,
          low=2),
    Param("max_queries", 2000, "query budget per image, every phase included", int,
          "queries", low=1),
    Param("noise", "salt_pepper", "the noise drawn", str,
          choices=("salt_pepper", "uniform")),
)  # fmt: skip


#: each plain attack's parameters by its ``defend attack`` name
DECLARED = {"hallucination": HALLUCINATION, "seg-fgsm": SEG_FGSM, "dgde": DGDE}
