"""Check that the synthetic set is learnable but not trivial (reports accuracies; not part of the tests).

Trains, on CPU, (a) a linear classifier on raw pixels and (b) a small CNN from scratch with the "small"
transforms, then prints test accuracy against chance (1/num_classes). Usage:
    PYTHONPATH=. python scripts/check_synthetic_learnability.py --root data/synthetic --iters 300
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn
from torch.utils.data import DataLoader

from tllib_tune.datasets import get_dataset, get_transforms


def evaluate(model: nn.Module, loader: DataLoader) -> float:
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            correct += (model(x).argmax(1) == y).sum().item()
            total += len(y)
    return correct / total


def genus_accuracy(model: nn.Module, test_set, species: int = 5) -> float:
    """Accuracy at the coarse level: classes c and c' share a genus when c // 5 == c' // 5."""
    model.eval()
    hits = 0
    with torch.no_grad():
        for x, y in DataLoader(test_set, batch_size=100):
            hits += (model(x).argmax(1) // species == y // species).sum().item()
    return hits / len(test_set)


def small_cnn(num_classes: int) -> nn.Module:
    def block(cin, cout):
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)
        )

    stem = nn.Sequential(nn.Conv2d(3, 24, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(24), nn.ReLU())
    return nn.Sequential(
        stem,
        block(24, 48),
        block(48, 96),
        block(96, 128),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(128, num_classes),
    )


def train(model, train_set, test_set, iters, lr, batch_size=32):
    loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=0)
    test_loader = DataLoader(test_set, batch_size=100)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=iters)
    it = 0
    while it < iters:
        for x, y in loader:
            model.train()
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            it += 1
            if it >= iters:
                break
    return evaluate(model, test_loader)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="data/synthetic")
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--scale", type=float, default=0.5, help="RandomResizedCrop's smallest area fraction")
    parser.add_argument(
        "--resnet18", action="store_true", help="also train torchvision's resnet18 from scratch"
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    tr = get_transforms("train", input_size=args.size, scale=(args.scale, 1.0))
    te = get_transforms("test", input_size=args.size)
    train_set = get_dataset("synthetic", args.root, "train", transform=tr)
    test_set = get_dataset("synthetic", args.root, "test", transform=te)
    n = train_set.num_classes
    print(f"{len(train_set)} train / {len(test_set)} test images, {n} classes, chance {1 / n:.3f}")

    t = time.time()
    linear = nn.Sequential(nn.Flatten(), nn.Linear(3 * args.size * args.size, n))
    acc = train(linear, train_set, test_set, args.iters, lr=0.002)
    print(f"linear on pixels, {args.iters} iters: test acc {acc:.3f} ({time.time() - t:.0f} s)")

    t = time.time()
    model = small_cnn(n)
    acc = train(model, train_set, test_set, args.iters, lr=0.05)
    print(f"small CNN from scratch, {args.iters} iters: test acc {acc:.3f} ({time.time() - t:.0f} s)")
    print(f"  of which the genus (body shape/colour) is right: {genus_accuracy(model, test_set):.3f}")

    if args.resnet18:
        import torchvision

        t = time.time()
        model = torchvision.models.resnet18(num_classes=n)
        acc = train(model, train_set, test_set, args.iters, lr=0.05)
        print(f"resnet18 from scratch, {args.iters} iters: test acc {acc:.3f} ({time.time() - t:.0f} s)")
        print(f"  of which the genus (body shape/colour) is right: {genus_accuracy(model, test_set):.3f}")


if __name__ == "__main__":
    main()
