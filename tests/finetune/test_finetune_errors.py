"""examples/finetune.py (tllib_tune.finetune's command line) on bad input and failures: one clear line on
stderr, a non-zero exit, no traceback.

Each case runs the script in a subprocess (except out-of-memory, which a CPU cannot produce on demand:
that one raises torch.OutOfMemoryError from the loop inside this process).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from tllib_tune.finetune import cli, runner
from tllib_tune.finetune.errors import divergence_advice
from tllib_tune.utils.checkpoint import save_checkpoint
from tllib_tune.utils.cli import flag_names, to_flags

from .conftest import FINETUNE, run_finetune, subprocess_env, tiny_args


def error_line(result) -> str:
    """The script's error message (the last stderr line), after checking there is no traceback."""
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines, f"no message on stderr (exit {result.returncode}); stdout: {result.stdout[-2000:]}"
    return lines[-1]


def fails(result, code: int, *fragments: str) -> str:
    line = error_line(result)
    assert result.returncode == code, f"exit {result.returncode}, expected {code}: {line}"
    assert line.startswith("finetune.py: error:"), line
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in: {line}"
    return line


class _Ran:
    """What :func:`run_here` saw: exit status and output, as a CompletedProcess holds them."""

    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def run_here(capsys):
    """Run the command line in this process (cheaper than a subprocess where the failure comes before
    any training): its exit status and output."""

    def run(argv) -> _Ran:
        capsys.readouterr()
        try:
            code = cli.main([str(a) for a in argv], prog="finetune.py")
        except SystemExit as exc:  # argparse's usage errors
            code = exc.code
        out = capsys.readouterr()
        return _Ran(code, out.out, out.err)

    return run


@pytest.fixture
def args(synthetic_root, tmp_path):
    def make(root=synthetic_root, log=tmp_path / "log", **overrides):
        return tiny_args(root, log, **overrides)

    return make


# ---- command line (argparse-style, exit 2) -----------------------------------------------------------------
@pytest.mark.parametrize(
    "flags, fragments",
    [
        ({"dataset": "mnist"}, ["argument -d/--dataset: invalid choice: 'mnist'"]),
        ({"arch": "resnet19"}, ["unknown model 'resnet19'", "did you mean resnet18"]),
        ({"mode": "fast"}, ["argument --mode: invalid choice: 'fast'"]),
        ({"sample_rate": "20"}, ["argument -sr/--sample-rate: invalid choice: 20"]),
        ({"mode_schedule": "train0-1"}, ["'train0-1' is not MODE:START-END"]),
        ({"mode_schedule": "train:0-1,tune:2-3", "epochs": "3"}, ["leaves epoch 2 without a mode"]),
        ({"mode_schedule": "fast:0-1"}, ["unknown mode 'fast'"]),
        ({"mode_schedule": "train:0-1", "epochs": "2"}, ["ends after epoch 1 but the run has --epochs 2"]),
        ({"val_ratio": "1.5"}, ["--val-ratio must be in [0, 1), got 1.5"]),
        ({"grad_accum_steps": "0"}, ["--grad-accum-steps must be >= 1, got 0"]),
        ({"grad_accum_steps": "two"}, ["argument --grad-accum-steps: invalid int value: 'two'"]),
        ({"save_every": "-5"}, ["--save-every must be >= 0 steps", "got -5"]),
        ({"sched": "linear"}, ["argument --sched: invalid choice: 'linear'"]),
        ({"warmup_epochs": "1", "epochs": "1"}, ["--warmup-epochs must be >= 0 and less than --epochs 1"]),
        ({"label_smoothing": "1"}, ["--label-smoothing must be in [0, 1), got 1.0"]),
        ({"progress_interval": "-1"}, ["--progress-interval must be >= 0 seconds, got -1.0"]),
        ({"phase": "eval"}, ["argument --phase: invalid choice: 'eval'"]),
    ],
    ids=[
        "dataset",
        "arch",
        "mode",
        "sample-rate",
        "schedule-syntax",
        "schedule-gap",
        "schedule-mode",
        "schedule-short",
        "val-ratio",
        "grad-accum",
        "grad-accum-text",
        "save-every",
        "sched",
        "warmup",
        "label-smoothing",
        "progress-interval",
        "phase",
    ],
)
def test_bad_command_line(args, run_here, flags, fragments):
    line = fails(run_here(args(**flags)), 2, *fragments)
    assert line.startswith(("finetune.py: error: argument", "finetune.py: error: --"))


def test_a_compile_backend_that_does_not_exist(args, run_here):
    fails(
        run_here(args(compile="", compile_backend="inducter")), 1, "--compile-backend 'inducter'", "inductor"
    )


# ---- data ------------------------------------------------------------------------------------------------
def test_batch_larger_than_the_training_set(args):
    fails(
        run_finetune(args(batch_size=100, sample_rate=15)),
        1,
        "--batch-size 100",
        "larger than the training set (20 images",  # 15 % of 5 per class: 1 per class
        "--batch-size 20 or less",
    )


@pytest.mark.parametrize("mode", ["train", "inplace-abn"])
def test_batch_of_one_with_a_1x1_map_under_batch_statistics(args, tmp_path, mode):
    # resnet18's last feature map is 1 x 1 at 32 px: BatchNorm with batch statistics cannot run on one image
    fails(
        run_finetune(args(batch_size=1, mode=mode)),
        1,
        "--batch-size 1 at --input-size 32",
        f"({mode} mode)",
        "use --batch-size 2 or more",
    )
    assert not (tmp_path / "log").exists()  # refused before the run directory is made


def test_missing_dataset_root(args, tmp_path):
    root = tmp_path / "no_cars_here"
    fails(
        run_finetune(args(dataset="stanford_cars", root=root)),
        1,
        "stanford_cars",
        str(root),
        "No Stanford Cars data",
    )


def _class_folders(root, splits=("train", "val"), classes=("cat", "dog"), per_class=2):
    from tests.datasets.trees import write_jpeg

    for split in splits:
        for c, name in enumerate(classes):
            for k in range(per_class):
                write_jpeg(root / split / name / f"{k}.jpg", seed=10 * c + k)
    return root


@pytest.mark.parametrize(
    "case, fragments",
    [
        ("empty-class", ["class folder 'eel' in", "holds no images", "add images or remove the folder"]),
        ("no-split", ["with no val/ or test/ folder", "--val-ratio, e.g. 0.2"]),
        ("no-images", ["no images in the class folders of", ".jpg"]),
        ("not-there", ["does not exist or is not a folder", "one folder per class"]),
        (
            "list-reader",
            ["no image_list/ folder", "looks like a class-folder tree", "use --dataset imagefolder"],
        ),
    ],
)
def test_class_folder_errors_are_one_line(args, run_here, tmp_path, case, fragments):
    root = tmp_path / "mine"
    if case in ("empty-class", "list-reader"):
        _class_folders(root)
        (root / "train" / "eel").mkdir()
    elif case == "no-split":
        _class_folders(root, splits=("train",))
    elif case == "no-images":
        for name in ("cat", "dog"):
            (root / "train" / name).mkdir(parents=True)
            (root / "train" / name / "notes.txt").write_text("no image")
    dataset = "imagelist" if case == "list-reader" else "imagefolder"
    run = run_finetune if case == "empty-class" else run_here  # one in a real process, the rest here
    fails(run(args(root=root, dataset=dataset, batch_size=2)), 1, f"data set {dataset!r}", *fragments)


@pytest.fixture
def broken_root(synthetic_root, tmp_path):
    """A private copy of the synthetic set to damage."""
    root = tmp_path / "broken"
    shutil.copytree(synthetic_root, root)
    return root / "CUB_200_2011"


def test_half_extracted_root(args, broken_root):
    (broken_root / "image_class_labels.txt").unlink()
    fails(run_finetune(args(root=broken_root.parent)), 1, "image_class_labels.txt")


def test_listed_image_missing(args, broken_root):
    (broken_root / "images" / "001.oval_dot" / "oval_dot_0003.jpg").unlink()
    fails(run_finetune(args(root=broken_root.parent)), 1, "oval_dot_0003.jpg")


def test_corrupt_image(args, broken_root):
    image = broken_root / "images" / "001.oval_dot" / "oval_dot_0006.jpg"  # a test image: evaluation reads it
    image.write_bytes(image.read_bytes()[:200])
    fails(run_finetune(args(root=broken_root.parent)), 1, "oval_dot_0006.jpg")


# The wrapper points the official CUB-200 resource at a local file, then runs finetune.py as a script.
_DOWNLOAD_WRAPPER = """
import runpy, sys
from tllib_tune.datasets.download import RESOURCES, Resource
RESOURCES["cub200"] = Resource(sys.argv[1], "CUB_200_2011.tgz", "CUB_200_2011", md5=sys.argv[2])
sys.argv = [sys.argv[3]] + sys.argv[4:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.parametrize("case", ["checksum-mismatch", "unreachable"])
def test_failed_download_leaves_nothing_behind(args, tmp_path, case):
    archive = tmp_path / "served" / "CUB_200_2011.tgz"
    archive.parent.mkdir()
    if case == "checksum-mismatch":
        archive.write_bytes(b"not the archive the checksum describes")
    url = archive.as_uri()  # unreachable: the file is never written
    root = tmp_path / "data" / "cub200"
    flags = args(root=root, dataset="cub200")
    result = run_finetune(
        ["-c", _DOWNLOAD_WRAPPER, url, "f" * 32, str(FINETUNE), *flags], cmd=[sys.executable]
    )
    fails(result, 1, "expected " + "f" * 32 if case == "checksum-mismatch" else "CUB_200_2011.tgz")
    leftovers = sorted(p.name for p in root.rglob("*")) if root.exists() else []
    assert leftovers == [], leftovers


# ---- weights and checkpoints -----------------------------------------------------------------------------
def test_imagenet_download_failure_is_an_error_not_random_weights(args, tmp_path):
    env = subprocess_env(
        TORCH_HOME=str(tmp_path / "torch_home"),
        https_proxy="http://127.0.0.1:9",
        http_proxy="http://127.0.0.1:9",
        HTTPS_PROXY="http://127.0.0.1:9",
        HTTP_PROXY="http://127.0.0.1:9",
        no_proxy="",
        NO_PROXY="",
    )
    flags = args()
    flags[flags.index("--pretrained") + 1] = "imagenet"
    fails(
        run_finetune(flags, env=env), 1, "could not load ImageNet weights for resnet18", "--pretrained none"
    )
    assert not (tmp_path / "log" / "checkpoints").exists()


def test_pretrained_file_missing(args, tmp_path):
    flags = args()
    flags[flags.index("--pretrained") + 1] = str(tmp_path / "nope.pth")
    fails(run_finetune(flags), 1, "nope.pth", "no such file")


@pytest.fixture
def checkpoint_path(tmp_path):
    """A training checkpoint of a resnet18 classifier with 20 classes, as finetune.py writes it."""
    from tllib_tune.models import get_model
    from tllib_tune.modules.classifier import Classifier

    model = Classifier(get_model("resnet18"), 20)
    path = tmp_path / "old" / "checkpoints" / "latest.pt"
    save_checkpoint(path, model, epoch=1, args={"arch": "resnet18"})
    return path


def test_checkpoint_from_another_arch(args, checkpoint_path):
    fails(
        run_finetune(args(arch="resnet34", resume=checkpoint_path)),
        1,
        "made with --arch resnet18",
        "--arch resnet34",
    )


def test_checkpoint_with_missing_keys(args, checkpoint_path):
    checkpoint = torch.load(checkpoint_path, weights_only=True)
    del checkpoint["model"]["head.weight"]
    torch.save(checkpoint, checkpoint_path)
    fails(run_finetune(args(resume=checkpoint_path)), 1, "missing keys: head.weight")


def test_truncated_checkpoint(args, checkpoint_path):
    data = checkpoint_path.read_bytes()
    checkpoint_path.write_bytes(data[: len(data) // 3])
    fails(run_finetune(args(resume=checkpoint_path)), 1, str(checkpoint_path), "truncated or corrupt")


def test_resume_pointing_nowhere(args, tmp_path):
    fails(run_finetune(args(resume=tmp_path / "missing" / "latest.pt")), 1, "latest.pt", "does not exist")


def test_test_phase_without_a_checkpoint_says_so_before_fetching_data(args, tmp_path):
    # neither the data set (absent here) nor ImageNet weights are looked for first
    flags = args(dataset="stanford_cars", root=tmp_path / "no_cars", log=tmp_path / "empty", phase="test")
    flags[flags.index("--pretrained") + 1] = "imagenet"
    fails(run_finetune(flags), 1, "--phase test needs a checkpoint", "--resume FILE")


class _RunsCode:
    """Unpickling this calls os.system: what a shared checkpoint must never be able to do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_a_checkpoint_holding_a_pickled_object_is_refused(args, checkpoint_path, tmp_path):
    checkpoint = torch.load(checkpoint_path, weights_only=True)
    marker = tmp_path / "code_ran"
    checkpoint["args"]["note"] = _RunsCode(marker)
    torch.save(checkpoint, checkpoint_path)
    for flags in (args(resume=checkpoint_path), ["--phase", "test", "--resume", str(checkpoint_path)]):
        fails(run_finetune(flags), 1, str(checkpoint_path), "not allowed (posix.system)", "refused")
        assert not marker.exists()


@pytest.fixture
def read_only_dir(tmp_path):
    """(a folder on a read-only file system, a command prefix that runs there). A real read-only mount
    in a private mount namespace (unshare, no root needed) where available; else a folder without write
    permission (which root ignores)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if (
        shutil.which("unshare")
        and subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode == 0
    ):
        mount = f'mount -t tmpfs -o ro tmpfs {folder} && exec "$@"'
        return folder, ["unshare", "-rm", "sh", "-c", mount, "sh"]
    if os.geteuid() == 0:
        pytest.skip("no unshare and running as root: cannot make a folder that root cannot write")
    folder.chmod(0o555)
    return folder, []


def test_a_read_only_log_is_one_line(args, read_only_dir):
    folder, prefix = read_only_dir
    flags = args(log=folder / "run")
    result = run_finetune(flags, cmd=[*prefix, sys.executable, str(FINETUNE)])
    line = fails(result, 1, f"--log {folder / 'run'} cannot be written", "give a folder you can write to")
    assert "Read-only file system" in line or "Permission denied" in line


def test_a_log_that_is_a_file_is_one_line(args, run_here, tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not a folder")
    fails(run_finetune(args(log=path)), 1, f"--log {path} is a file, not a folder")
    fails(run_here(args(log=path / "run")), 1, f"is inside {path}, which is a file")
    fails(run_here(["--phase", "test", "--log", str(path)]), 1, f"--log {path} is a file")
    assert path.read_text() == "not a folder"


def test_existing_run_is_not_overwritten(args, checkpoint_path):
    fails(run_finetune(args(log=checkpoint_path.parent.parent)), 1, "already holds a run", "--resume")


def test_fp16_needs_cuda(args):
    fails(run_finetune(args(amp="fp16")), 1, "--amp fp16 needs a CUDA device", "bf16")


# ---- failures during training ----------------------------------------------------------------------------
def test_non_finite_loss_in_deploy_mode(args, synthetic_root, backbone_file, tmp_path):
    # epoch 0 trains normally; from epoch 1 the rate is multiplied by 1e8 and the folded weights blow up
    flags = tiny_args(
        synthetic_root,
        tmp_path / "log",
        backbone_file,
        mode="deploy",
        epochs=3,
        iters_per_epoch=3,
        lr_gamma="1e8",
        lr_decay_epochs=1,
    )
    result = run_finetune(flags)
    line = fails(
        result,
        3,
        "the loss became",
        "at epoch 2/3, step ",  # epochs and steps numbered from 1: the second epoch
        "deploy mode",
        "Deploy mode is unstable",
        "Tune mode computes the same function stably",
        "--mode tune",
    )
    assert str(tmp_path / "log" / "checkpoints" / "latest.pt") in line
    checkpoint = torch.load(tmp_path / "log" / "checkpoints" / "latest.pt", weights_only=True)
    assert (checkpoint["epoch"], checkpoint["iteration"]) == (1, 0)  # the last good one, after epoch 1
    assert all(torch.isfinite(v).all() for v in checkpoint["model"].values() if v.is_floating_point())
    summary = json.loads((tmp_path / "log" / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["diverged_at"]["epoch"] == 2


@pytest.mark.parametrize(
    "mode, amp, pretrained, wanted, unwanted",
    [
        (
            "tune",
            "bf16",
            "none",
            ["train mode more epochs before tune", "--lr", "try --amp none"],
            ["bf16 ("],
        ),
        ("tune", "fp16", "imagenet", ["--lr", "--amp bf16"], ["--pretrained none"]),
        ("eval", "none", "imagenet", ["--lr"], ["--amp", "--pretrained"]),
        ("train", "none", "none", ["--lr"], ["--amp", "--pretrained"]),
    ],
)
def test_divergence_advice_fits_the_run(mode, amp, pretrained, wanted, unwanted):
    advice = to_flags(divergence_advice(mode, amp, pretrained), flag_names(cli.build_parser()))
    assert advice[0].isupper()
    for fragment in wanted:
        assert fragment in advice, advice
    for fragment in unwanted:
        assert fragment not in advice, advice  # never the setting the run already uses


def test_out_of_memory_names_mode_and_batch(args, monkeypatch, capsys):
    def out_of_memory(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(runner, "train_one_epoch", out_of_memory)
    assert cli.main(args(mode="eval"), prog="finetune.py") == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("finetune.py: error: out of memory in eval mode with --batch-size 4")
    assert "--mode tune" in line and "smaller --batch-size" in line


_OOM_WRAPPER = """
import runpy, sys, torch
import tllib_tune.engine as engine
def out_of_memory(*args, **kwargs):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
engine.train_one_epoch = out_of_memory
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_out_of_memory_in_a_real_process_exits_non_zero(args):
    result = run_finetune(["-c", _OOM_WRAPPER, str(FINETUNE), *args(mode="train")], cmd=[sys.executable])
    line = fails(result, 1, "out of memory in train mode with --batch-size 4", "--mode tune")
    assert "smaller --batch-size" in line
