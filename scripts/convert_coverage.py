"""How much of each model family convert_convbn turns into ConvBN/LinearBN blocks: a Markdown table of
BatchNorms converted / total per family, and what is left and why (reason counts).

    python scripts/convert_coverage.py           # torchvision's classification models and a timm sample
    python scripts/convert_coverage.py --models torchvision/resnet18 timm/levit_128s --out coverage.md

Models are built with random weights on the meta device (no memory, no compute: regnet_y_128gf takes a
second), converted on an input of their usual size, and the table is printed and written to ``--out``.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tllib_tune.common import atomic_write  # noqa: E402
from tllib_tune.models import check_model  # noqa: E402
from tllib_tune.modules.convert import ConversionReport, convert_convbn, init_on_meta  # noqa: E402

TIMM_SAMPLE = (
    "resnet18d resnet50d efficientnet_b0 tf_efficientnet_b0 mobilenetv3_small_050 mobilenetv3_large_100 "
    "regnetx_002 regnety_002 hrnet_w18_small dla34 cspresnet50 cs3darknet_s ghostnet_050 rexnet_100 "
    "levit_128s resnetv2_50 dpn68 mixnet_s repvgg_a0 convmixer_768_32"
).split()
# one family per torchvision name: the name up to its size (resnet18 -> resnet, regnet_x_400mf -> regnet_x)
_FAMILY = re.compile(
    r"^(efficientnet_v2|mobilenet_v\d|regnet_[xy]|shufflenet_v2|wide_resnet|inception_v3|[a-z]+)"
)


def default_models() -> List[str]:
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    return [f"torchvision/{n}" for n in names] + [f"timm/{n}" for n in TIMM_SAMPLE]


def family(model: str) -> str:
    """torchvision models group by family (vgg11_bn -> vgg_bn); each timm model is its own row."""
    library, name = model.split("/", 1)
    if library == "timm":
        return model
    base = _FAMILY.match(name).group(1)
    return f"torchvision/{base}_bn" if base == "vgg" and name.endswith("_bn") else f"torchvision/{base}"


def build(model: str) -> Tuple[torch.nn.Module, torch.Tensor]:
    """The model with random weights on the meta device, and a meta input of its usual size."""
    library, name = model.split("/", 1)
    with init_on_meta():
        if library == "timm":
            import timm

            net = timm.create_model(name, pretrained=False)
            size = tuple(net.pretrained_cfg.get("input_size", (3, 224, 224)))
        else:
            import torchvision

            kwargs = {"init_weights": False} if name in ("googlenet", "inception_v3") else {}
            net = torchvision.models.get_model(name, weights=None, **kwargs)
            size = (3, 299, 299) if name == "inception_v3" else (3, 224, 224)
    return net, torch.empty((2,) + size, device="meta")


def coverage(models: Sequence[str]) -> Dict[str, List[ConversionReport]]:
    """Family -> the conversion reports of its models."""
    reports: Dict[str, List[ConversionReport]] = defaultdict(list)
    for model in models:
        net, x = build(model)
        _, report = convert_convbn(net, x, return_report=True)
        reports[family(model)].append(report)
        print(f"{model}: {len(report.converted)} / {report.total}", file=sys.stderr)
    return reports


def table(reports: Dict[str, List[ConversionReport]]) -> str:
    """The Markdown table: one row per family with BatchNorms, then a total row."""
    lines = [
        "| family | models | BatchNorms converted / total | left, and why (count) |",
        "|---|---:|---:|---|",
    ]
    converted = total = 0
    for name, group in reports.items():
        n_conv, n_total = sum(len(r.converted) for r in group), sum(r.total for r in group)
        if n_total == 0:
            continue
        reasons: Counter = Counter()
        for report in group:
            reasons.update({reason: len(names) for reason, names in report.reasons().items()})
        left = "; ".join(f"{reason} ({count})" for reason, count in reasons.most_common()) or "none"
        lines.append(f"| {name} | {len(group)} | {n_conv} / {n_total} | {left} |")
        converted, total = converted + n_conv, total + n_total
    models = sum(len(g) for g in reports.values() if any(r.total for r in g))
    lines.append(f"| **all** | {models} | **{converted} / {total}** | |")
    return "\n".join(lines) + "\n"


def _check_names(parser: argparse.ArgumentParser, models: Sequence[str]) -> None:
    for model in models:
        if not model.startswith(("torchvision/", "timm/")):
            parser.error(f"--models {model!r}: name a model torchvision/<name> or timm/<name>")
        try:
            check_model(model)
        except ValueError as exc:
            parser.error(f"--models {model!r}: {exc}")


def page(text: str, argv: Sequence[str]) -> str:
    """The table as a documentation page: a title, the command that made it and the library versions."""
    import timm
    import torchvision

    command = " ".join(["python scripts/convert_coverage.py", *argv])
    return (
        "# convert_convbn coverage\n\n"
        "BatchNorms that `tllib_tune.convert_convbn` turns into ConvBN/LinearBN blocks, per model family, "
        "and what it leaves and why.\n"
        f"Generated by `{command}` (torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"timm {timm.__version__}; random weights on the meta device).\n\n" + text
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="convert_coverage.py", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", nargs="+", help="torchvision/<name> or timm/<name> (default: all + timm sample)"
    )
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "convert_coverage.md")
    args = parser.parse_args(argv)
    models = args.models or default_models()
    _check_names(parser, models)
    text = table(coverage(models))
    print(text, end="")
    try:
        with atomic_write(args.out, "w") as f:
            f.write(page(text, sys.argv[1:] if argv is None else argv))
    except OSError as exc:
        parser.error(f"--out {str(args.out)!r} cannot be written ({exc.strerror or exc})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
