"""Reproduce the three seed papers' headline results on the built-in synthetic data.

    python scripts/reproduce_seeds.py runs/demo --out docs/reproduction.md
    python scripts/reproduce_seeds.py runs/demo --sections dgde   # re-run one section

RUN_DIR is what ``defend demo RUN_DIR`` writes (``data/`` and the checkpoints
``recon-unet.pt``, ``recon-varnet.pt``, ``seg.pt``, ``cls.pt``). A second segmentation
architecture (``seg-unetplusplus.pt``) is trained here if it is missing. The tables go to
``--out`` (markdown) with sweep plots beside it; every number in them is computed by this run.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import defend
from defend.attacks import DGDE, HallucinationAttack, SegmentationFGSM
from defend.io import write_json, write_text
from defend.plots import plot_sweep
from defend.train import TrainConfig, default_schedule, train_model

#: (norm, eps), relative: l2 to each coil's k-space norm; l-inf to the RMS of the movable
#: entries (a box-filling perturbation has l2 norm eps x the k-space norm)
HALLUCINATION_SWEEP = [("inf", e) for e in (0.02, 0.05, 0.1, 0.2)] + [
    ("2", e) for e in (0.02, 0.05, 0.1, 0.2)
]
SEG_EPS = [0.002, 0.004, 0.008, 0.016, 0.032]
SECTIONS = ("hallucination", "segmentation", "dgde")


def table(header: list[str], rows: list[list]) -> str:
    def fmt(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def hallucination(run: Path, n: int, max_iter: int, figures: Path) -> tuple[str, dict]:
    rows, raw = [], {}
    for model in ("unet", "varnet"):
        ckpt = run / f"recon-{model}.pt"
        est = defend.load_estimator(ckpt)
        x, _ = defend.load_arrays(run / "data", "recon", "test", n, checkpoint=ckpt)
        series = {"strength": [], "recon SSIM": [], "input PSNR / 50 dB": []}
        for norm, eps in HALLUCINATION_SWEEP:
            attack = HallucinationAttack(
                est, eps=eps, norm=norm, max_iter=max_iter, patience=10, batch_size=n
            )
            attack.generate(x)
            r = attack.report
            claim = (r["strength"] >= 0.5) & (r["recon_ssim"] >= 0.95) & (r["input_psnr"] >= 40)
            rows.append(
                [
                    model,
                    f"l{norm}",
                    eps,
                    float(r["strength"].mean()),
                    float(r["strength"].min()),
                    float(r["recon_ssim"].mean()),
                    float(r["recon_psnr"].mean()),
                    float(r["recon_region_psnr"].mean()),
                    float(r["input_psnr"].mean()),
                    float(r["error_outside"].mean()),
                    f"{int(claim.sum())}/{len(claim)}",
                ]
            )
            raw[f"{model}/l{norm}/{eps}"] = {k: v.tolist() for k, v in r.items()}
            if norm == "inf":
                series["strength"].append(float(r["strength"].mean()))
                series["recon SSIM"].append(float(r["recon_ssim"].mean()))
                series["input PSNR / 50 dB"].append(float(r["input_psnr"].mean()) / 50)
            print(
                f"hallucination {model} l{norm} {eps}: strength {r['strength'].mean():.3f}",
                flush=True,
            )
        linf = [e for norm, e in HALLUCINATION_SWEEP if norm == "inf"]
        plot_sweep(
            figures / f"hallucination_{model}.png",
            linf,
            series,
            "eps (l-inf, relative to the k-space norm)",
            f"Hallucination attack on {model}",
        )
    header = [
        "model",
        "norm",
        "eps (relative)",
        "strength mean",
        "strength min",
        "recon SSIM",
        "recon PSNR",
        "region PSNR",
        "input PSNR",
        "error outside",
        "claim met",
    ]
    return table(header, rows), raw


def ensure_second_seg(run: Path) -> Path:
    ckpt = run / "seg-unetplusplus.pt"
    if not ckpt.exists():
        epochs, lr = default_schedule("seg")
        train_model(
            "seg",
            run / "data",
            ckpt,
            model="UnetPlusPlus/resnet18",
            model_options={"encoder_depth": 3, "decoder_channels": [64, 32, 16]},
            config=TrainConfig(epochs=epochs, lr=lr, progress=False),
        )
    return ckpt


def segmentation(run: Path, n: int, figures: Path) -> tuple[str, dict]:
    rows, raw = [], {}
    for name, ckpt in (
        ("Unet/resnet18", run / "seg.pt"),
        ("UnetPlusPlus/resnet18", ensure_second_seg(run)),
    ):
        est = defend.load_estimator(ckpt)
        x, y = defend.load_arrays(run / "data", "seg", "test", None, checkpoint=ckpt)
        keep = y.reshape(len(y), -1).any(1)  # the paper scores slices with a mask
        x, y = x[keep][:n], y[keep][:n]
        series = {}
        for loss in ("bce", "training"):
            diffs = []
            for eps in SEG_EPS:
                attack = SegmentationFGSM(est, eps=eps, loss=loss)
                attack.generate(x, y)
                r = attack.report
                diff = float(np.nanmean(r["dice_diff"]))
                diffs.append(diff)
                rows.append(
                    [
                        name,
                        loss,
                        eps,
                        float(np.nanmean(r["dice_clean"])),
                        float(np.nanmean(r["dice_adv"])),
                        diff,
                    ]
                )
                raw[f"{name}/{loss}/{eps}"] = {k: v.tolist() for k, v in r.items()}
            series[f"{loss} FGSM: Dice Diff"] = diffs
            print(f"seg {name} {loss}: {[round(d, 3) for d in diffs]}", flush=True)
        plot_sweep(
            figures / f"seg_fgsm_{name.split('/')[0].lower()}.png",
            SEG_EPS,
            series,
            "eps (l-inf on [0, 1])",
            f"FGSM on {name}: BCE vs training loss",
        )
    header = ["model", "attack loss", "eps", "Dice clean", "Dice adv", "Diff (clean-adv)/clean"]
    return table(header, rows), raw


def dgde(run: Path, n: int, max_queries: int) -> tuple[str, dict]:
    est = defend.load_estimator(run / "cls.pt")
    x, y = defend.load_arrays(run / "data", "cls", "test", None, checkpoint=run / "cls.pt")
    correct = np.flatnonzero(est.predict(x).argmax(1) == y)
    pick = np.concatenate([correct[y[correct] == c][: n // 2] for c in (0, 1)])
    x, y = x[pick], y[pick]
    rows, raw = [], {}
    for noise in ("salt_pepper", "uniform"):
        attack = DGDE(est, noise=noise, max_queries=max_queries, batch_size=len(x))
        start = time.perf_counter()
        attack.generate(x, y)
        seconds = (time.perf_counter() - start) / len(x)
        r = attack.report
        ok = r["success"] == 1  # NaN (misclassified clean) is not a success
        px = r["pixels"][ok]
        for label in ("all", 0, 1):
            sel = np.ones_like(ok) if label == "all" else (r["label"] == label)
            p = r["pixels"][ok & sel]
            rows.append(
                [
                    noise,
                    label,
                    int(sel.sum()),
                    float(np.nanmean(r["noise_success"][sel])),
                    float(np.nanmean(r["success"][sel])),
                    float(p.mean()) if p.size else float("nan"),
                    float(p.min()) if p.size else float("nan"),
                    float(p.max()) if p.size else float("nan"),
                    float(p.std()) if p.size else float("nan"),
                    float(100 * p.mean() / (x.shape[-1] * x.shape[-2])) if p.size else float("nan"),
                    float(r["queries"][sel].mean()),
                    seconds,
                ]
            )
        raw[noise] = {k: v.tolist() for k, v in r.items()}
        mean_px = px.mean() if px.size else float("nan")
        print(f"dgde {noise}: success {ok.mean():.2f} pixels {mean_px:.1f}", flush=True)
    header = [
        "noise",
        "true class",
        "images",
        "noise-only success",
        "DGDE success",
        "pixels mean",
        "min",
        "max",
        "std",
        "% of image",
        "queries",
        "s / image",
    ]
    return table(header, rows), raw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("run", type=Path, help="folder written by `defend demo`")
    parser.add_argument("--out", type=Path, default=Path("docs/reproduction.md"))
    parser.add_argument("--n", type=int, default=8, help="samples per experiment")
    parser.add_argument("--max-iter", type=int, default=60, help="hallucination iterations")
    parser.add_argument("--max-queries", type=int, default=4000, help="DGDE queries per image")
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help="comma-separated sections to (re-)run; the others keep their last results",
    )
    args = parser.parse_args()
    chosen = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    figures = args.out.parent / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    runs = {
        "hallucination": lambda: hallucination(args.run, args.n, args.max_iter, figures),
        "segmentation": lambda: segmentation(args.run, args.n, figures),
        "dgde": lambda: dgde(args.run, args.n, args.max_queries),
    }
    json_path = args.out.with_suffix(".json")
    results = json.loads(json_path.read_text()) if json_path.exists() else {}
    for name in chosen:
        start = time.perf_counter()
        text, raw = runs[name]()
        seconds = time.perf_counter() - start
        results[name] = {"table": text, "rows": raw, "seconds": seconds}
        print(f"\n## {name} ({seconds:.0f} s)\n{text}", flush=True)
    write_json(json_path, results)
    tables = [f"{results[k]['table']}" for k in SECTIONS if "table" in results.get(k, {})]
    write_text(args.out.with_suffix(".tables.md"), "\n\n".join(tables) + "\n")


if __name__ == "__main__":
    main()
