"""The benchmark's result as text: one table per measurement, each goal with whether it is met.

:func:`format_bench` prints what ``defend bench attacks`` shows; the JSON it writes is the
result itself through :func:`defend.io.jsonable` (NaN as null).
"""

from __future__ import annotations

import math
from typing import Any


def _fmt(value: Any, spec: str = ".3g") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def _yes(met: bool) -> str:
    return "yes" if met else "NO"


def _kernels(cfg: dict[str, Any]) -> str:
    """``cpu kernels avx2 (pinned), `` for the header (nothing for results saved before)."""
    return f"cpu kernels {cfg['cpu_kernels']}, " if cfg.get("cpu_kernels") else ""


def _config_lines(cfg: dict[str, Any]) -> list[str]:
    """The run's header: folder, split, device, threads, torch, repeats."""
    return [
        f"defend bench attacks: {cfg['run_dir']} ({cfg['split']} split, n={cfg['n']}), "
        f"device {cfg['device']}{' ' + cfg['gpu'] if cfg.get('gpu') else ''}, "
        f"{cfg['threads']} torch thread(s), {_kernels(cfg)}torch {cfg['torch']}, "
        f"median of {cfg['repeats']} interleaved repeats after a warm-up",
        "",
    ]


def _floor_lines(floors: list[dict[str, Any]]) -> list[str]:
    """Table 1: each attack's wall time over its floor, and what each floor runs."""
    lines = [
        "1. Attack wall time over its floor of pure model time",
        f"   {'attack':24s} {'attack s':>9s} {'floor s':>9s} {'ratio':>7s} {'goal':>7s}  met",
    ]
    for row in floors:
        lines.append(
            f"   {row['name']:24s} {row['attack_s']:9.3f} {row['floor_s']:9.3f} "
            f"{row['ratio']:7.3f} {'<= ' + format(row['goal'], '.2f'):>7s}  {_yes(row['met'])}"
        )
    lines.append("   floors:")
    lines += [f"   - {row['name']}: {row['floor']}" for row in floors]
    lines += [
        "   ratio = median over repeats of attack time / floor time (each pair "
        "measured back to back)",
        "",
    ]
    return lines


def _pgd_lines(pgd: dict[str, Any]) -> list[str]:
    """Table 2: HallucinationAttack against ART's ProjectedGradientDescent."""
    p = pgd["params"]
    return [
        f"2. HallucinationAttack vs ART ProjectedGradientDescent ({pgd.get('model', 'recon')}, "
        f"same k-space, batch {p['batch_size']}, {p['max_iter']} steps, "
        f"eps {p['eps']:.4g} = {p['eps_rel']} x median max|k|, eps_step {p['eps_step']:.3g}, "
        f"{p['perturbed']})",
        f"   {'attack':24s} {'wall s':>9s} {'strength':>9s} {'linf':>9s}",
        f"   {'HallucinationAttack':24s} {pgd['ours_s']:9.3f} "
        f"{pgd['strength_ours']:9.3f} {pgd['linf_ours']:9.3g}",
        f"   {'ART PGD (numpy path)':24s} {pgd['art_s']:9.3f} "
        f"{pgd['strength_art']:9.3f} {pgd['linf_art']:9.3g}",
        f"   ratio ours / ART {pgd['ratio']:.3f} (ART / ours {1 / pgd['ratio']:.2f}x), "
        f"goal < 1 (ours faster): {_yes(pgd['met'])}",
        "   strength = mean change inside the region / intended change "
        "(alpha x clean range); 1 = feature fully inserted",
        "",
    ]


def _pixel_table(pix: dict[str, Any]) -> list[str]:
    """Table 3's rows: DGDE, one measured row per PixelAttack pixel count, and the projection
    of ART's ``th=None`` search, its name saying it is not measured."""
    d = pix["dgde"]
    lines = [
        f"   {'attack':48s} {'success':>7s} {'pixels':>7s} {'fwd/img':>8s} "
        f"{'s/img':>8s} {'ART/DGDE':>9s}",
        f"   {d['name']:48s} {d['success']:7.2f} {_fmt(d['pixels'], '7.1f'):>7s} "
        f"{d['forwards_per_image']:8.0f} {d['s_per_image']:8.2f} {'':>9s}",
    ]
    for row in pix["pixel_attack"]:
        lines.append(
            f"   {row['name']:48s} {row['success']:7.2f} {_fmt(row['pixels'], '7.1f'):>7s} "
            f"{row['forwards_per_image']:8.0f} {row['s_per_image']:8.2f} "
            f"{row['speedup']:8.1f}x"
        )
    proj = pix.get("projected_defaults")
    if proj:
        lines.append(
            f"   {proj['name']:48s} {'-':>7s} {'-':>7s} "
            f"{proj['forwards_per_image']:8.0f} {proj['s_per_image']:8.0f} {proj['speedup']:8.0f}x"
        )
    return lines


def _goal_status(goal: dict[str, Any]) -> str:
    """``yes``, ``NO``, or ``NO (not comparable: why)``."""
    status = goal.get("status", "met" if goal["met"] else "not met")
    return _yes(goal["met"]) + (f" ({status})" if status.startswith("not comparable") else "")


def _pixel_goal_lines(pix: dict[str, Any]) -> list[str]:
    """Table 3's goals, each against a single measured PixelAttack row, and footnotes."""
    g, prm = pix["goals"], pix["params"]
    pixels = g["pixels"]
    against = f" vs {pixels['against']}, on the {pixels.get('images')} image(s) both flipped"
    lines = [
        f"   goal success DGDE >= ART's best th ({g['success']['against']}): "
        f"{g['success']['dgde']:.2f} vs {g['success']['art']:.2f}: {_yes(g['success']['met'])}",
        f"   goal fewer pixels at equal or better success"
        f"{against if pixels.get('against') else ''}: "
        f"{_fmt(pixels['dgde'], '.1f')} vs {_fmt(pixels['art'], '.1f')}: {_goal_status(pixels)}",
        f"   goal >= {g['speed']['goal']:.0f}x faster per image than the fastest single th "
        f"that flipped an image ({g['speed']['against']}): {g['speed']['speedup']:.1f}x: "
        f"{_goal_status(g['speed'])}",
        f"   {prm['pixel_attack']}; pixels = mean over successes of pixels that "
        f"differ; fwd/img = {prm['forwards']}",
    ]
    if pix.get("projected_defaults"):
        lines.append(f"   projected row: {pix['projected_defaults']['basis']}")
    return [*lines, ""]


def _pixel_lines(pix: dict[str, Any]) -> list[str]:
    """Table 3: DGDE against ART's PixelAttack."""
    prm = pix["params"]
    title = (
        f"3. DGDE vs ART PixelAttack (same classifier, same {prm['images']} images, "
        f"{prm['labels']})"
    )
    return [title, *_pixel_table(pix), *_pixel_goal_lines(pix)]


def format_bench(result: dict[str, Any]) -> str:
    """The benchmark's result (:func:`defend.bench.bench_attacks` / ``bench_suite``) as text
    tables: ratios, goals, and whether each goal is met. Parts the result lacks are left out."""
    cfg = result.get("config")
    lines = _config_lines(cfg) if cfg else []
    if result["floors"]:
        lines += _floor_lines(result["floors"])
    if result.get("art_pgd"):
        lines += _pgd_lines(result["art_pgd"])
    if result.get("art_pixel"):
        lines += _pixel_lines(result["art_pixel"])
    if cfg:
        lines.append(f"total {cfg['seconds']:.0f} s")
    return "\n".join(lines)


def _train_rows(rows: list[dict[str, Any]]) -> list[str]:
    """The training benchmark's table: one row per (task, method)."""
    lines = [
        f"{'task':13s} {'method':14s} {'steps':>5s} {'std s/b':>8s} {'meth s/b':>9s} "
        f"{'ratio':>6s} {'cpu r':>6s} {'ideal':>5s} {'r/ideal':>7s} {'goal':>8s} {'met':>3s} "
        f"{'own ideal':>9s} {'r/own':>6s}"
    ]
    for row in rows:
        lines.append(
            f"{row['task']:13s} {row['method']:14s} {row['steps']:5d} "
            f"{row['standard_s']:8.3f} {row['method_s']:9.3f} {row['ratio']:6.2f} "
            f"{_fmt(row['cpu_ratio'], '6.2f'):>6s} "
            f"{row['ideal']:5d} {row['ratio_over_ideal']:7.2f} "
            f"{'<= ' + format(row['goal'], '.1f'):>8s} {_yes(row['met']):>3s} "
            f"{row['inherent_ideal']:9.2f} {row['ratio_over_inherent']:6.2f}"
        )
    return lines


def _train_notes(result: dict[str, Any]) -> list[str]:
    """What the columns mean, each task's forward and loader time, the methods' own ideals."""
    cfg = result["config"]
    lines = [
        "ratio = median over repeats of method epoch / standard epoch, wall clock (each pair "
        f"back to back); ideal = steps + 1; goal = {cfg['goal']} x ideal; met: by ratio",
        "cpu r = the same ratio of the process's CPU time (CPU devices): the work done, less "
        "sensitive to other jobs on a shared machine",
        "own ideal = ideal + what the method inherently runs beyond it, no-grad forwards "
        "counted at the task's measured forward / standard-step time:",
        *[f"  - {note}" for note in dict.fromkeys(r["note"] for r in result["rows"]) if note],
        "per task: forward (no grad, eval mode) / standard step; data loading per batch "
        "(one pass, not timed in the ratios) / standard step:",
    ]
    for info in result["tasks"]:
        lines.append(
            f"  - {info['name']} ({info['model']}, input {tuple(info['input_shape'])}): "
            f"forward {info['forward_fraction']:.2f}, loader {info['loader_s']:.4f} s/batch "
            f"= {info['loader_fraction']:.3f} of a standard step"
        )
    return lines


def format_train_bench(result: dict[str, Any]) -> str:
    """``defend bench train``'s result (:func:`defend.bench.bench_train`) as a text table:
    per task and method the standard and method seconds per batch, their ratio, the ideal
    (steps + 1), the goal and whether it is met, and the method's own ideal."""
    cfg = result["config"]
    header = [
        f"defend bench train: {cfg['data_dir']}, epoch = {cfg['batches']} training batches of "
        f"{cfg['batch_size']}, device {cfg['device']}"
        f"{' ' + cfg['gpu'] if cfg.get('gpu') else ''}, {cfg['threads']} torch thread(s), "
        f"{_kernels(cfg)}torch {cfg['torch']}, "
        f"median of {cfg['repeats']} interleaved repeats after a warm-up",
        f"timed: {cfg['timed']}",
        "",
    ]
    footer = ["", f"total {cfg['seconds']:.0f} s"]
    return "\n".join(header + _train_rows(result["rows"]) + [""] + _train_notes(result) + footer)
