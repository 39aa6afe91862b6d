"""``OUT/report.html`` of ``defend matrix`` (:mod:`defend.matrix.html`): self-contained, and it
renders in a real browser (headless Chromium; skipped where missing, but not under CI)."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from defend.intervals import wilson
from defend.matrix.html import write_report
from defend.matrix.record import CellRecord
from defend.matrix.results import flags, write_results

IMG = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)" alt="([^"]*)"')


def _record(out: Path, task: str, defence: str, attack: str, eps: float | None,
            **metrics: Any) -> CellRecord:  # fmt: skip
    """A finished cell record with an examples npz of 2 random (16, 16) samples."""
    cell_id = f"{task}.net.{defence}.{attack}" + ("" if eps is None else f".eps{eps:.4g}")
    rng = np.random.default_rng(len(cell_id))
    x = rng.random((2, 16, 16))
    images = {"input": x, "attacked": x + 0.01 * rng.standard_normal(x.shape),
              "output": x**2, "attacked_output": x**2 + 0.1 * rng.random(x.shape)}  # fmt: skip
    examples = Path("examples") / f"{cell_id}.npz"
    (out / "examples").mkdir(parents=True, exist_ok=True)
    np.savez(out / examples, **{k: v.astype(np.float16) for k, v in images.items()})
    base = {"clean_quality": 30.0, "attacked_quality": 20.0, "success": 0.5,
            "quality_metric": "psnr", "linf": eps or 0.0, "l2": 1.0}  # fmt: skip
    success = {**base, **metrics}["success"]
    return CellRecord(id=cell_id, task=task, model="net", defence=defence, attack=attack,
                      eps=eps, params={}, seed=0, n=8, seconds=0.1,
                      metrics={**base, **metrics}, examples=str(examples),
                      intervals={"success": list(wilson(round(8 * success), 8))})  # fmt: skip


def _records(out: Path) -> list[CellRecord]:
    """Recon cells (an eps sweep whose success falls from 8/8 to 0/8: a flag, the intervals
    separate; a detector cell), a cls cell
    with a NaN quality and a certificate, and a failed seg cell."""
    detector = _record(out, "recon", "detector", "hallucination", 0.01, detection_auroc=0.8,
                       detected=0.75, false_positive=0.125, undetected_success=0.25)  # fmt: skip
    detector.roc = {"fpr": [0.0, 0.25, 0.5, 1.0], "tpr": [0.0, 0.6, 0.9, 1.0]}
    failed = CellRecord(id="seg.net.none.seg-fgsm.eps0.03", task="seg", model="net",
                        defence="none", attack="seg-fgsm", eps=0.03, n=8, status="failed",
                        error="RuntimeError: <boom> & more")  # fmt: skip
    smooth = _record(out, "cls", "smooth", "art-pgd", 0.03, attacked_quality=float("nan"),
                     certified=0.5, abstain=0.125)  # fmt: skip
    return [
        _record(out, "recon", "none", "hallucination", 0.01, success=1.0),
        _record(out, "recon", "none", "hallucination", 0.03, success=0.0),
        detector,
        smooth,
        failed,
    ]


@pytest.fixture
def report(tmp_path: Path) -> tuple[Path, list[dict[str, str]]]:
    records = _records(tmp_path)
    raised = flags(records)
    return write_report(tmp_path, records, raised), raised


def test_report_is_self_contained(report: tuple[Path, list[dict[str, str]]]) -> None:
    path, raised = report
    text = path.read_text()
    images = IMG.findall(text)
    alts = [alt for _, alt in images]
    from PIL import Image

    for data, _ in images:  # every inline image is a valid PNG
        assert Image.open(io.BytesIO(base64.b64decode(data))).format == "PNG"
    assert any("attack success" in a for a in alts)  # heatmaps
    assert any("certified" in a for a in alts) and any("AUROC" in a for a in alts)
    assert any("ROC curves" in a for a in alts)
    assert any("success vs eps" in a for a in alts)  # the recon sweep has 2 eps
    assert sum("clean input" in a for a in alts) == 4  # examples of the 4 finished cells
    assert len(text) < 2_000_000
    assert "http://" not in text and "https://" not in text
    assert not re.search(r'(src|href)="(?!data:)', text)
    assert "<script" not in text and "<link" not in text
    assert "sanity flags" in text and raised and "success falls as eps grows" in text
    assert "seg.net.none.seg-fgsm.eps0.03" in text and "&lt;boom&gt; &amp; more" in text
    assert "5 cells, 4 ok, 1 failed" in text


def test_report_without_flags_or_failures(tmp_path: Path) -> None:
    records = _records(tmp_path)[3:4]
    text = write_report(tmp_path, records, []).read_text()
    assert "none raised" in text and "failed cells</h2><p>none</p>" in text


def test_write_results_writes_the_report(tmp_path: Path) -> None:
    summary = write_results(tmp_path, _records(tmp_path))
    assert (tmp_path / "report.html").exists() and (tmp_path / "matrix.md").exists()
    assert summary["failed"] == ["seg.net.none.seg-fgsm.eps0.03"]


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and Path("/usr/bin/chromium").exists():
        found = "/usr/bin/chromium"
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (CI needs it for the report's browser test)")
        pytest.skip("chromium is not installed")
    return found


def _browse(chromium: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
               "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}",
               "--window-size=1200,2000", *args]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)


def test_report_renders_in_chromium(
    report: tuple[Path, list[dict[str, str]]], tmp_path: Path
) -> None:
    chromium = _chromium()
    path, _ = report
    shot = tmp_path / "shot.png"
    done = _browse(chromium, tmp_path, f"--screenshot={shot}", path.as_uri())
    assert shot.exists(), done.stderr[-2000:]
    assert shot.stat().st_size > 20_000
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.shape[:2] == (2000, 1200) and pixels.std() > 10
    # a copy with a probe script: how many images did the browser decode?
    probe = tmp_path / "probe.html"
    script = ("<script>window.addEventListener('load', () => { const i = [...document.images];"
              " document.body.dataset.decoded = i.filter(m => m.complete && m.naturalWidth > 0)"
              ".length + '/' + i.length; });</script>")  # fmt: skip
    probe.write_text(path.read_text().replace("</body>", script + "</body>"))
    dom = _browse(chromium, tmp_path, "--virtual-time-budget=10000", "--dump-dom",
                  probe.as_uri()).stdout  # fmt: skip
    found = re.search(r'data-decoded="(\d+)/(\d+)"', dom)
    assert found, dom[-2000:]
    decoded, total = int(found[1]), int(found[2])
    assert total == len(IMG.findall(path.read_text())) and decoded == total > 0


def test_cell_record_keeps_the_file_format(tmp_path: Path) -> None:
    """A record written and read back is the same record, and the file holds only the keys
    that are set: no ``error`` on a finished cell, no summary on a failed one, ``eps`` null
    kept (an attack without one)."""
    from defend.matrix.results import read_cells, write_cell

    finished, failed = _records(tmp_path)[2], _records(tmp_path)[4]
    failed.eps = None
    for record in (finished, failed):
        write_cell(tmp_path, record, {"config_hash": "0" * 16})
    back = read_cells([tmp_path])
    assert back[finished.id].roc == finished.roc and back[finished.id].metrics == finished.metrics
    written = json.loads((tmp_path / "cells" / f"{failed.id}.json").read_text())
    assert written["eps"] is None and written["config_hash"] == "0" * 16
    assert "metrics" not in written and "examples" not in written and written["error"]
    assert "error" not in json.loads((tmp_path / "cells" / f"{finished.id}.json").read_text())
    assert back[failed.id] == CellRecord.from_json(written) and not back[failed.id].ok


def _cell(defence: str, success: list[float], eps: float | None = 0.1, attack: str = "art-pgd",
          task: str = "cls", **metrics: float) -> CellRecord:  # fmt: skip
    from defend.matrix.outcomes import summarise

    summary = summarise(task, {"success": np.asarray(success, np.float64)})
    summary["metrics"].update(metrics)
    cell_id = f"{task}.net.{defence}.{attack}" + ("" if eps is None else f".eps{eps:g}")
    return CellRecord(id=cell_id, task=task, model="net", defence=defence, attack=attack,
                      eps=eps, n=len(success), **summary)  # fmt: skip


def test_the_verdict_judges_each_defence_by_its_worst_attack():
    from defend.matrix.verdict import sentence, verdicts

    beaten, resisted = [1.0] * 16, [0.0] * 16
    records = [
        _cell("none", beaten), _cell("none", resisted, attack="noise"),
        _cell("smoothing", resisted), _cell("smoothing", resisted, attack="noise"),
        _cell("detector", [1.0] * 8 + [0.0] * 8),  # overlaps 16/16? no: [0.28, 0.72]
        _cell("adv-pgd", [1.0] * 15 + [0.0]),
        _cell("none", resisted, eps=None, attack="dgde"),
        _cell("smoothing", resisted, eps=None, attack="dgde"),
        _cell("smoothing", [0.0] * 16, attack="inside-radius"),  # a check, not an attack
    ]  # fmt: skip
    found = {(v.defence, v.budget): v for v in verdicts(records)}
    assert found[("none", "eps 0.1")].outcome == "undefended"
    assert found[("smoothing", "eps 0.1")].outcome == "holds"
    assert found[("detector", "eps 0.1")].outcome == "holds"  # 8/16 [0.28, 0.72] below [0.81, 1]
    assert found[("adv-pgd", "eps 0.1")].outcome == "does not hold"
    assert found[("smoothing", "dgde")].outcome == "nothing to defend"
    assert found[("smoothing", "eps 0.1")].worst.attack == "art-pgd"
    assert sentence(found[("adv-pgd", "eps 0.1")]).startswith(
        "net / adv-pgd at eps 0.1: does not hold. Worst attack art-pgd: success 0.94 ["
    )
    worse = _cell("smoothing", beaten, eps=None, attack="dgde")  # a defence that lets it in
    [v] = [v for v in verdicts([records[6], worse]) if v.defence == "smoothing"]
    assert v.outcome == "does not hold"  # not "nothing to defend": 16/16 against 0/16
    nan = _cell("cls-none", [np.nan] * 4)  # no sample right when clean
    assert [v.outcome for v in verdicts([nan])] == ["not judged"]
    guessing = _cell("smoothing", resisted, chance_quality=0.5, clean_quality=0.5)
    guessing.intervals["clean_quality"] = [0.19, 0.81]  # a low success over a coin flip
    [v] = [v for v in verdicts([records[0], guessing]) if v.defence == "smoothing"]
    assert v.outcome == "at chance" and "means nothing" in sentence(v)


def test_quality_flags_fire_on_useless_models_only():
    from defend.matrix.results import quality_flags

    worse = _cell("none", [0.0] * 16, task="recon")
    worse.metrics.update(clean_quality=0.2, zero_filled_quality=0.6)
    worse.intervals.update(clean_quality=[0.15, 0.25], zero_filled_quality=[0.55, 0.65])
    chance = _cell("none", [0.0] * 16, chance_quality=0.5, clean_quality=0.5)
    chance.intervals["clean_quality"] = [0.3, 0.7]
    blind = _cell("detector", [0.0] * 16, detection_auroc=0.1)
    blind.intervals["detection_auroc"] = [0.0, 0.3]
    names = [f["flag"] for f in quality_flags([worse, chance, blind])]
    assert names == [
        "model worse than its zero-filled input",
        "model not shown better than chance",
        "detector below chance",
    ]
    fine = _cell("none", [0.0] * 16, chance_quality=0.5, clean_quality=0.95)
    fine.intervals["clean_quality"] = [0.8, 1.0]
    fine.metrics["detection_auroc"], fine.intervals["detection_auroc"] = 0.3, [0.1, 0.6]
    assert quality_flags([fine]) == []


def test_the_report_opens_with_the_verdict_and_says_when_it_means_nothing(tmp_path):
    """The verdict (with what success means) comes before the cells; a one-epoch run says
    it is a pipeline check; "none raised" is not shown as good news when nothing succeeded."""
    (tmp_path / "config.json").write_text(
        json.dumps({"source": "smoke", "run": {"n": 2, "tasks": ["cls"]}, "cls": {"epochs": 1}})
    )
    records = [_cell("none", [0.0, 0.0]), _cell("smoothing", [0.0, 0.0])]
    text = write_report(tmp_path, records, []).read_text()
    assert text.index("<h2>verdict</h2>") < text.index("<h3>metrics</h3>")
    assert "an image classified right when clean is classified wrong" in text
    assert "A pipeline check, not a study: models trained for 1 epoch(s) and 2 samples" in text
    assert '<p class="ok">none raised' not in text and "no attack succeeded" in text
    assert "nothing to defend" in text and "Grey cells" in text
