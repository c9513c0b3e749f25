"""Fine-tuning reaches any model: ``--arch timm/...`` with a local ``--pretrained`` file (a small timm
model here; ``timm/efficientnet_b0`` goes the same way, only slower).

In-process through :func:`tllib_tune.finetune.cli.main`, tiny settings; the checkpoint is checked against the
file it was started from, so a run that ignored the file or converted nothing fails.
"""

from __future__ import annotations

import pytest
import torch

from tllib_tune.finetune.cli import main
from tllib_tune.modules import convert_convbn

from ..conftest import randomize_all_bn_
from .conftest import tiny_args

timm = pytest.importorskip("timm")


def test_timm_backbone_from_a_local_file_fine_tunes_in_tune_mode(synthetic_root, tmp_path, capsys):
    torch.manual_seed(0)
    reference = randomize_all_bn_(timm.create_model("mobilenetv3_small_050"), seed=0)
    weights = tmp_path / "mobilenetv3_small_050.pth"
    torch.save(reference.state_dict(), weights)
    log = tmp_path / "run"
    args = tiny_args(synthetic_root, log, weights, arch="timm/mobilenetv3_small_050", mode="tune")
    assert main(args) == 0
    out = capsys.readouterr().out
    pairs = len(convert_convbn(timm.create_model("mobilenetv3_small_050"), return_report=True)[1].converted)
    assert f"{{'tune': {pairs}}}" in out, out  # every exclusive Conv -> BN pair switched to tune

    saved = torch.load(log / "checkpoints" / "latest.pt", map_location="cpu", weights_only=False)["model"]
    start = reference.state_dict()
    for key in ("bn1.running_var", "blocks.2.0.bn2.running_mean", "blocks.5.0.bn1.running_var"):
        # tune mode never updates the statistics: they are the file's, so the file was loaded
        torch.testing.assert_close(saved["backbone.body." + key], start[key], rtol=0, atol=0)
    assert not torch.equal(saved["backbone.body.conv_stem.weight"], start["conv_stem.weight"])  # it trained
