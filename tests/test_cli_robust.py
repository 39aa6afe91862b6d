"""A CLI that never surprises: bad input is one line and refused before any work or file,
Ctrl-C says how to resume, and reruns neither mix settings nor redo finished work."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.main import get_command
from typer.testing import CliRunner

import defend.adaptive.runner
import defend.attacks.apply
import defend.data
import defend.data.synth as synth
import defend.io
import defend.train
from defend.bench.fixtures import run_models
from defend.cli import app
from defend.cli.app import INTERRUPTED
from defend.device import pick_device
from defend.errors import DefendError, ModelOptionError, OutputError
from defend.io import check_writable, load_checkpoint, load_weights_file
from defend.models import build_model, check_model_options, default_model_config
from entry import MAIN, defend_main, one_line_error

runner = CliRunner()


def refused(*args: object) -> str:
    """Invoke the app in-process; assert it raised a DefendError and return its message."""
    result = runner.invoke(app, [str(a) for a in args])
    assert isinstance(result.exception, DefendError), (result.output, result.exception)
    return str(result.exception)


def files_under(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*"))


def file_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# ----------------------------------------------------------------------------- 1. devices


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("cuda", "--device cuda: CUDA is not available on this machine"),
        ("cuda:7", "--device cuda:7:"),
        ("foo", "unknown device 'foo' (expected cpu, cuda, cuda:N or mps)"),
    ],
)
def test_train_refuses_bad_device_in_one_line(device, message, synth_dir, tmp_path):
    if device.startswith("cuda") and torch.cuda.is_available() and device == "cuda":
        pytest.skip("this machine has CUDA")
    result = defend_main(
        "train", "cls", "--data", synth_dir, "--out", tmp_path / "run" / "x.pt", "--device", device
    )
    one_line_error(result, message)
    assert files_under(tmp_path) == []


def test_pick_device_checks_the_machine(monkeypatch):
    assert pick_device("cpu") == torch.device("cpu")
    with pytest.raises(DefendError, match=r"^unknown device 'foo' \(expected cpu, cuda"):
        pick_device("foo")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DefendError, match="CUDA is not available on this machine"):
        pick_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(DefendError, match=r"--device cuda:7: this machine has 1 CUDA device"):
        pick_device("cuda:7")
    monkeypatch.setenv("DEFEND_DEVICE", "bar")
    with pytest.raises(DefendError, match="DEFEND_DEVICE: unknown device 'bar'"):
        pick_device(None)


@pytest.mark.parametrize(
    "command",
    [
        ["attack", "dgde", "--checkpoint", "c.pt", "--data", "d", "--out", "{tmp}/a"],
        ["attack", "seg-fgsm", "--checkpoint", "c.pt", "--data", "d", "--out", "{tmp}/a"],
        ["attack", "hallucination", "--checkpoint", "c.pt", "--data", "d", "--out", "{tmp}/a"],
        ["bench", "models", "{tmp}/bench"],
        ["bench", "attacks", "{tmp}/bench", "--out", "{tmp}/b.json"],
    ],
)
def test_commands_check_device_before_work(command, tmp_path):
    args = [a.format(tmp=tmp_path) for a in command]
    assert "unknown device 'foo'" in refused(*args, "--device", "foo")
    assert files_under(tmp_path) == []


# ------------------------------------------------------------------------ 2. output paths


def test_check_writable(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(OutputError, match=r"out\.pt: cannot be written: .*file\.txt is a file"):
        check_writable(blocker / "out.pt", "file")
    with pytest.raises(OutputError, match="file.txt is a file, not a folder"):
        check_writable(blocker / "a" / "b", "dir")
    with pytest.raises(OutputError, match=r"file\.txt: is a file, not a folder"):
        check_writable(blocker, "dir")
    with pytest.raises(OutputError, match="is a folder"):
        check_writable(tmp_path, "file")
    assert check_writable(blocker, "file") == blocker  # an existing file is replaced
    assert check_writable(tmp_path / "new" / "deep" / "x.pt", "file")
    assert check_writable(tmp_path / "new" / "deep", "dir")
    assert check_writable(tmp_path, "dir")
    assert files_under(tmp_path) == [blocker]  # nothing created


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes anywhere")
def test_check_writable_read_only_folder(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(OutputError, match="no write permission in .*locked"):
            check_writable(locked / "sub" / "x.pt", "file")
        with pytest.raises(OutputError, match="no write permission"):
            check_writable(locked, "dir")
    finally:
        locked.chmod(0o755)


@pytest.mark.parametrize(
    "command",
    [
        ["train", "cls", "--data", "{data}", "--out", "{bad}/x.pt", "--epochs", "1"],
        ["attack", "dgde", "--checkpoint", "c.pt", "--data", "{data}", "--out", "{bad}/a"],
        ["attack", "seg-fgsm", "--checkpoint", "c.pt", "--data", "{data}", "--out", "{bad}/a"],
        ["attack", "hallucination", "--checkpoint", "c.pt", "--data", "{data}", "--out", "{bad}"],
        ["bench", "models", "{bad}/bench", "--quick"],
        ["data", "synth", "{bad}/data"],
        ["bench", "attacks", "{data}", "--out", "{bad}/b.json"],
    ],
)
def test_out_under_a_file_is_refused_before_work(command, synth_dir, tmp_path):
    bad = tmp_path / "file.txt"
    bad.write_text("x")
    args = [a.format(data=synth_dir, bad=bad) for a in command]
    assert "is a file, not a folder" in refused(*args)
    assert files_under(tmp_path) == [bad]


def test_train_out_under_a_file_is_one_line(synth_dir, tmp_path):
    bad = tmp_path / "file.txt"
    bad.write_text("x")
    result = defend_main("train", "cls", "--data", synth_dir, "--out", bad / "out.pt")
    one_line_error(result, f"{bad / 'out.pt'}: cannot be written")


# -------------------------------------------------------------------------- 3. --lr, --epochs


def test_train_passes_zero_lr_and_epochs_through(monkeypatch, tmp_path):
    seen = {}

    def config(**kwargs):
        seen.update(kwargs)
        return kwargs

    monkeypatch.setattr(defend.train, "TrainConfig", config)
    monkeypatch.setattr(defend.train, "train_model", lambda *a, **k: [])
    args = ["train", "cls", "--data", tmp_path, "--out", tmp_path / "x.pt"]
    runner.invoke(app, [*map(str, args), "--lr", "0", "--epochs", "0"], catch_exceptions=False)
    assert seen["lr"] == 0 and seen["epochs"] == 0
    runner.invoke(app, list(map(str, args)), catch_exceptions=False)
    assert seen["lr"] > 0 and seen["epochs"] > 0  # the defaults when not given


def test_lr_zero_is_one_line(tmp_path):
    result = defend_main("train", "cls", "--data", tmp_path, "--out", tmp_path / "x.pt", "--lr", 0)
    one_line_error(result, "--lr must be a finite number > 0")
    assert files_under(tmp_path) == []


def test_epochs_help_text():
    params = {p.name: p for p in get_command(app).commands["train"].params}
    assert "0 with --weights: evaluate the weights" in params["epochs"].help
    assert "see README" in params["epochs"].help


# ---------------------------------------------------------------------------- 4. --set


def test_set_with_a_bad_value_is_one_line(tmp_path):
    result = defend_main(
        "train", "recon", "--data", tmp_path, "--out", tmp_path / "x.pt", "--set", "chans=abc"
    )
    one_line_error(result, "--set chans=abc: expected an integer")
    assert files_under(tmp_path) == []


@pytest.mark.parametrize(
    ("task", "model", "pair", "message"),
    [
        ("recon", "unet", "chans=abc", "--set chans=abc: expected an integer"),
        ("recon", "unet", "chans=-3", "--set chans=-3: expected a positive integer"),
        ("recon", "unet", "num_pool_layers=0", "expected a positive integer"),
        ("recon", "unet", "drop_prob=2", "--set drop_prob=2: expected a probability in [0, 1]"),
        ("recon", "unet", "chans=true", "expected an integer"),
        ("recon", "unet", "foo=1", "valid: chans, num_pool_layers, drop_prob, crop"),
        ("recon", "varnet", "num_cascades=[1]", "expected an integer"),
        ("seg", None, "decoder_channels=5", "expected a list"),
        ("seg", None, "encoder_depth=x", "expected an integer"),
        ("cls", None, "num_classes=x", "expected an integer"),
        ("cls", None, "name=resnet50", "--model"),
    ],
)
def test_set_is_checked_before_data_loads(task, model, pair, message, tmp_path):
    args = ["train", task, "--data", tmp_path / "missing", "--out", tmp_path / "x.pt"]
    args += ["--model", model] if model else []
    assert message in refused(*args, "--set", pair)


def test_build_model_bad_values_are_defend_errors():
    for options in ({"chans": -3}, {"num_pool_layers": 0}, {"drop_prob": 2}, {"chans": "abc"}):
        with pytest.raises(ModelOptionError):
            build_model("recon", {**default_model_config("recon", "unet"), **options})
    with pytest.raises(DefendError, match="cannot build recon model 'unet'.*'x'"):
        build_model("recon", {"name": "unet", "crop": "x"})
    with pytest.raises(DefendError, match="cannot build seg"):
        build_model("seg", {**default_model_config("seg"), "encoder_depth": 9})
    # values of the right kind pass, JSON lists included
    check_model_options("recon", "unet", {"crop": [16, 16], "drop_prob": 0, "chans": 4})
    check_model_options("seg", None, {"decoder_channels": [32, 16, 8], "decoder_use_norm": True})
    build_model("recon", {"name": "unet", "chans": 4, "num_pool_layers": 1, "crop": [16, 16]})


# ---------------------------------------------------------------------- 5. bad checkpoints


@pytest.fixture
def bad_files(tmp_path) -> dict[str, Path]:
    files = {
        "random": tmp_path / "random.pt",
        "text": tmp_path / "text.pt",
        "zip": tmp_path / "zip.pt",
        "empty": tmp_path / "empty.pt",
    }
    files["random"].write_bytes(np.random.default_rng(0).bytes(1000))
    files["text"].write_text("not a checkpoint\n")
    with zipfile.ZipFile(files["zip"], "w") as archive:
        archive.writestr("a.txt", "hello")
    files["empty"].write_bytes(b"")
    return files


def test_not_a_torch_file(bad_files):
    for path in bad_files.values():
        with pytest.raises(DefendError) as info:
            load_checkpoint(path)
        assert str(info.value) == f"{path}: not a defend checkpoint (not a PyTorch file)"
        with pytest.raises(DefendError) as info:
            load_weights_file(path)
        assert str(info.value) == f"{path}: not a PyTorch weight file"


def test_pickle_that_runs_code_keeps_its_own_message(tmp_path):
    for name, save in (
        ("torch.pt", lambda p, obj: torch.save(obj, p)),
        ("raw.pkl", lambda p, obj: p.write_bytes(__import__("pickle").dumps(obj))),
    ):
        path = tmp_path / name
        save(path, {"args": argparse.Namespace(lr=1)})
        for load in (load_checkpoint, load_weights_file):
            with pytest.raises(DefendError) as info:
                load(path)
            message = str(info.value)
            assert "not a plain state dict" in message and "weights_only" in message
            assert "argparse.Namespace" in message and "\n" not in message


def test_bad_checkpoint_on_the_command_line_is_one_line(bad_files, synth_dir, tmp_path):
    result = defend_main("info", bad_files["random"])
    one_line_error(result, "not a defend checkpoint (not a PyTorch file)")
    assert len(result.stderr) < 200
    out = tmp_path / "ckpt" / "x.pt"
    args = ["train", "cls", "--data", synth_dir, "--out", out, "--epochs", "1"]
    message = refused(*args, "--weights", bad_files["text"], "--no-progress")
    assert message == f"{bad_files['text']}: not a PyTorch weight file"
    assert not out.exists()


# ------------------------------------------------------------------------------ 6. Ctrl-C


def test_ctrl_c_prints_the_resume_hint(tmp_path):
    out = tmp_path / "d"
    args = ["data", "synth", out, "--size", "32", "--coils", "1", "--slices", "2"]
    proc = subprocess.Popen(
        [sys.executable, "-c", MAIN, *map(str, args), "--volumes", "3000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,  # bytes: text mode would turn tqdm's "\r" into "\n"
        # a job started in the background (CI, `cmd &`) inherits SIGINT ignored: restore it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while not list((out / "train").glob("*.h5")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "synth wrote nothing in 120 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stderr = proc.communicate(timeout=60)[1].decode()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "Aborted" not in stderr
    assert "\r" in stderr  # the progress bar was drawn ...
    assert stderr.split("\n")[-2:] == [INTERRUPTED, ""], stderr  # ... and the hint has its line
    assert (out / synth.MARKER).is_file() and not (out / "dataset.json").exists()
    # the same folder with other settings is refused, naming the difference
    message = refused(*args, "--volumes", "3")
    assert "holds an interrupted synth with volumes 3000 (you asked 3)" in message


def test_help_and_usage_errors_unchanged():
    result = defend_main("--help", isolated=True)
    assert result.returncode == 0 and "Usage" in result.stdout and not result.stderr
    result = defend_main("train", "--help")
    assert result.returncode == 0 and "--no-progress" in result.stdout
    result = defend_main("train", "recon", "--data", "x")
    assert result.returncode == 2 and "Missing option '--out'" in result.stderr
    assert "Traceback" not in result.stderr
    result = defend_main()
    assert result.returncode == 2 and "Commands" in result.stdout + result.stderr


# ------------------------------------------------------------------------- 7. data synth

SMALL = {"size": 24, "coils": 2, "volumes": 4, "slices": 2, "progress": False}


def test_data_synth_prints_one_summary_line(tmp_path):
    out = tmp_path / "d"
    args = ["data", "synth", out, "--size", "32", "--coils", "2", "--volumes", "3", "--slices", "2"]
    result = runner.invoke(app, [*map(str, args), "--no-progress"], catch_exceptions=False)
    assert result.exit_code == 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith(f"wrote {out}: 3 volumes (train 1 / val 1 / test 1), 6 slices")
    assert "32 px, 2 coils in " in lines[0] and f"details in {out / 'dataset.json'}" in lines[0]
    info = json.loads((out / "dataset.json").read_text())
    assert {"params", "splits", "total", "tasks", "format"} <= set(info)
    assert not (out / synth.MARKER).exists()
    again = runner.invoke(app, [*map(str, args), "--no-progress"], catch_exceptions=False)
    assert "already there" in again.output and len(again.output.strip().splitlines()) == 1


def test_data_synth_test_volumes(tmp_path):
    args = ["data", "synth", tmp_path / "d", "--size", "16", "--coils", "1", "--volumes", "5",
            "--slices", "1", "--test-volumes", "3", "--no-progress"]  # fmt: skip
    result = runner.invoke(app, list(map(str, args)))
    assert result.exit_code == 0 and "(train 1 / val 1 / test 3)" in result.output
    bad = runner.invoke(app, list(map(str, [*args[:-2], "4"])))
    assert isinstance(bad.exception, DefendError) and "leave a volume" in str(bad.exception)


def test_synth_resumes_an_interrupted_run_byte_for_byte(tmp_path, monkeypatch):
    synth.synthesize(tmp_path / "fresh", seed=1, **SMALL)
    write_volume = synth._write_volume

    def interrupt_at_third(out, split, v, params):
        if v == 2:
            raise KeyboardInterrupt
        return write_volume(out, split, v, params)

    monkeypatch.setattr(synth, "_write_volume", interrupt_at_third)
    with pytest.raises(KeyboardInterrupt):
        synth.synthesize(tmp_path / "run", seed=1, **SMALL)
    assert (tmp_path / "run" / synth.MARKER).is_file()
    with pytest.raises(DefendError, match="interrupted synth with seed 1 \\(you asked 0\\)"):
        synth.synthesize(tmp_path / "run", seed=0, **SMALL)
    calls = []
    monkeypatch.setattr(synth, "_write_volume", lambda *a: calls.append(a[2]) or write_volume(*a))
    result = synth.synthesize(tmp_path / "run", seed=1, **SMALL)
    assert result["status"] == "resumed" and calls == [2, 3]  # volumes 0 and 1 were kept
    assert file_bytes(tmp_path / "run") == file_bytes(tmp_path / "fresh")


def test_synth_keeps_a_complete_set_and_refuses_other_settings(tmp_path):
    out = tmp_path / "d"
    synth.synthesize(out, seed=1, **SMALL)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    result = synth.synthesize(out, seed=1, **SMALL)
    assert result["status"] == "existing"
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    with pytest.raises(
        DefendError, match=r"holds a synthetic data set with size 24 \(you asked 32"
    ):
        synth.synthesize(out, **{**SMALL, "size": 32, "seed": 1})
    with pytest.raises(DefendError, match="size 24, seed 1 \\(you asked size 32, seed 0\\)"):
        synth.synthesize(out, **{**SMALL, "size": 32})
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def test_no_progress_everywhere():
    commands = get_command(app).commands
    groups = {"data": ["synth"], "attack": ["hallucination", "seg-fgsm", "dgde"]}
    found = [commands["bench"].commands["models"], commands["train"]]
    found += [commands[g].commands[c] for g, names in groups.items() for c in names]
    for command in found:
        assert "progress" in {p.name for p in command.params}, command.name


@pytest.mark.parametrize(("flag", "verbose"), [([], True), (["--no-progress"], False)])
def test_attack_progress_is_the_attack_verbose(flag, verbose, monkeypatch, tmp_path):
    seen = {}

    def fake_run_attack(name, **kwargs):
        seen.update(kwargs["params"])
        return {
            "summary": {},
            "files": {},
            "attacked": 1,
            "shapes": [[1]],
            "data_root": "d",
            "warnings": [],
        }

    monkeypatch.setattr(defend.adaptive.runner, "run_attack", fake_run_attack)
    monkeypatch.setattr(defend.attacks.apply, "format_summary", lambda summary: "")
    args = ["attack", "dgde", "--checkpoint", "c.pt", "--data", "d", "--out", tmp_path / "a"]
    runner.invoke(app, [*map(str, args), *flag], catch_exceptions=False)
    assert seen["verbose"] is verbose


# ----------------------------------------------------------------- 8. bench models


@pytest.fixture
def fake_model_steps(monkeypatch) -> list[str]:
    """Replace synthesis, training and attacks by stubs that record what they were asked."""
    calls: list[str] = []
    fixtures = defend.bench.fixtures  # the names it imported
    monkeypatch.setattr(fixtures, "synthesize", lambda out, **k: calls.append(f"synth {k}"))
    monkeypatch.setattr(
        fixtures, "train_model", lambda task, d, out, **k: calls.append(f"train {out.name}")
    )
    monkeypatch.setattr(fixtures, "load_checkpoint", lambda path: {"metrics": {}})
    monkeypatch.setattr(
        fixtures, "run_attack", lambda *a, **k: calls.append("attack") or {"summary": {}}
    )
    return calls


def test_bench_models_refuses_a_folder_with_other_settings(fake_model_steps, tmp_path):
    out = tmp_path / "bench"
    run_models(out, quick=True, log=lambda s: None)
    settings = json.loads((out / "models.json").read_text())
    assert settings["quick"] is True and settings["data"]["size"] == 32
    assert {t["epochs"] for t in settings["training"].values()} == {1}
    fake_model_steps.clear()
    message = refused("bench", "models", out)
    assert message == (
        f"{out}: holds a --quick models folder (32 px, 1 epoch); the full one needs another "
        "folder or removing it"
    )
    with pytest.raises(DefendError, match=r"holds models with seed 0 \(you asked seed 3\)"):
        run_models(out, quick=True, seed=3, log=lambda s: None)
    assert fake_model_steps == []  # refused before anything ran
    assert json.loads((out / "models.json").read_text()) == settings
    run_models(out, quick=True, n=2, log=lambda s: None)  # same settings: resumes
    assert any(c.startswith("train") for c in fake_model_steps)


def test_bench_models_refuses_an_older_folder_with_other_data(fake_model_steps, tmp_path):
    out = tmp_path / "bench"
    params = {"size": 32, "coils": 2, "volumes": 4, "slices": 4, "seed": 0}
    (out / "data").mkdir(parents=True)
    (out / "data" / "dataset.json").write_text(json.dumps({"params": params}))
    with pytest.raises(DefendError, match="holds models with data of size 32"):
        run_models(out, log=lambda s: None)
    assert not (out / "models.json").exists() and fake_model_steps == []


def test_bench_models_refuses_bad_n_before_any_work(fake_model_steps, tmp_path):

    with pytest.raises(DefendError, match="--n must be >= 1"):
        run_models(tmp_path / "d", n=0, quick=True, log=lambda s: None)
    assert fake_model_steps == [] and not (tmp_path / "d").exists()
