"""SimCLR on Fashion-MNIST with LightlySSL (PyTorch): the reference side of the parity study.

Runs in its own Python environment with torch, torchvision and lightly (not keras-ssl's):

    python benchmarks/fashion_mnist_parity/lightly_simclr.py --arrays=DIR/arrays.npz \
        --steps=100 --seed=0 --output=DIR/lightly_s0.npz

It trains the recipe of docs/results/fashion_mnist_parity.md with lightly's own pieces
(`SimCLRTransform`, `SimCLRProjectionHead`, `NTXentLoss`) on the 60,000 training images
and writes the pre-logits of the training and test images (the 32-px arrays that
`parity.py arrays` wrote, the ones keras-ssl's side is evaluated on) to `--output`, at
step 0 and at the end. `parity.py evaluate` then scores both libraries' features with
the same kNN and linear probe.

The views are cut from the 28-px IDX pixels, as a LightlySSL user's would be;
`--train_images=resized` cuts them from the 32-px images of keras-ssl's reader
instead, which is what keras-ssl's views are cut from (each view then resampled twice,
and smoother: docs/results/fashion_mnist_parity.md). `--views=N` trains nothing: it
writes one view of each of the first N training images to `--output` (`.npy`, float32
`[N, 32, 32, 3]`) for `parity.py views` to compare with keras-ssl's.
`--trajectory=float64` (or `float32`) trains `--steps` steps in that precision and
writes their views, losses and the weights before and after instead of features:
`trajectory.py` trains keras-ssl's SimCLR from the same weights on the same views and
compares the two.

The network is keras-ssl's `resnet_v2(depth=18, widening_factor=1, small_image_stem=True)`
written in PyTorch: a 3x3 stride-1 stem of 16 channels, pre-activation basic units
(2 per block) of 16, 32, 64 and 128 channels with strides 1, 2, 2, 2, a final batch
norm and ReLU, global average pooling (128-d pre-logits). Batch norm uses Keras'
settings (momentum 0.99, epsilon 1e-3); weights use PyTorch's default initialisation,
which is what a PyTorch user gets.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch
import torch.library
from torch import nn

# The CPU build of torch that this machine offers and PyPI's torchvision (built
# against CUDA torch) do not share compiled operators: torchvision's detection
# ops fail to register on import. Only its image transforms are used here, so
# their registration is skipped.
_register_fake = torch.library.register_fake
torch.library.register_fake = lambda *args, **kwargs: (lambda fn: fn)
import torchvision  # noqa: E402,F401

torch.library.register_fake = _register_fake

from lightly.loss import NTXentLoss  # noqa: E402
from lightly.models.modules import SimCLRProjectionHead  # noqa: E402
from lightly.transforms import SimCLRTransform  # noqa: E402
from PIL import Image  # noqa: E402

_BN = dict(momentum=0.01, eps=1e-3)  # Keras' momentum 0.99 is PyTorch's 0.01


class _Unit(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.preact = nn.Sequential(nn.BatchNorm2d(cin, **_BN), nn.ReLU())
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.mid = nn.Sequential(nn.BatchNorm2d(cout, **_BN), nn.ReLU())
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = (
            nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None
        )

    def forward(self, x):
        preact = self.preact(x)
        shortcut = x if self.shortcut is None else self.shortcut(preact)
        return shortcut + self.conv2(self.mid(self.conv1(preact)))


class PreActResNet18(nn.Module):
    """ResNet-18 v2 at widening factor 1 with the small-image stem (128-d pre-logits)."""

    def __init__(self, k: int = 1):
        super().__init__()
        widths = [16 * k, 32 * k, 64 * k, 128 * k]
        layers = [nn.Conv2d(3, 16 * k, 3, 1, 1, bias=False)]
        cin = 16 * k
        for width, stride in zip(widths, (1, 2, 2, 2)):
            layers += [_Unit(cin, width, stride), _Unit(width, width, 1)]
            cin = width
        layers += [nn.BatchNorm2d(cin, **_BN), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.net = nn.Sequential(*layers)
        self.dim = cin

    def forward(self, x):
        return self.net(x)


class _TwoViews(torch.utils.data.Dataset):
    def __init__(self, images, transform):
        self.images, self.transform = images, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        views = self.transform(Image.fromarray(self.images[i]).convert("RGB"))
        return views[0], views[1]


def _features(backbone, images, batch=1000):
    backbone.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = torch.from_numpy(np.asarray(images[i:i + batch], np.float32)).permute(0, 3, 1, 2)
            out.append(backbone(x).numpy())
    backbone.train()
    return np.concatenate(out)


def _weights(backbone, head):
    """Every parameter and batch-norm statistic, by its PyTorch name, as numpy."""
    return {f"{prefix}.{k}": v.detach().numpy().copy()
            for prefix, module in (("backbone", backbone), ("head", head))
            for k, v in module.state_dict().items() if not k.endswith("num_batches_tracked")}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arrays", required=True, help="arrays.npz written by parity.py arrays")
    parser.add_argument("--output", required=True, help="features .npz to write")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--learning_rate", type=float, default=0.06, help="per 256 images")
    parser.add_argument("--weight_decay", type=float, default=5e-4)
    parser.add_argument("--temperature", type=float, default=0.5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2,
                        help="torch's compute threads (its float32 sums' order depends on them)")
    parser.add_argument(
        "--train_images", choices=("raw", "resized"), default="raw",
        help="what the views are cut from: the 28-px IDX pixels (raw, LightlySSL's way) or "
             "the 32-px images keras-ssl's reader makes and keras-ssl's views are cut from "
             "(resized: two bilinear resamplings per view, as in keras-ssl)")
    parser.add_argument("--views", type=int, default=0,
                        help="write one view of each of the first N images to --output, no training")
    parser.add_argument("--trajectory", choices=("float64", "float32"),
                        help="train --steps steps in this precision and write the weights before "
                             "and after, each step's views and loss to --output for "
                             "trajectory.py, no features")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    torch.set_num_threads(args.threads)
    arrays = np.load(args.arrays)
    if args.train_images == "raw":
        images = arrays["train_raw"]  # uint8 [60000, 28, 28], the IDX pixels
    else:  # float [60000, 32, 32, 3] in [0, 1], to 8 bits as PIL holds them
        images = np.round(arrays["train"][..., 0] * 255).astype(np.uint8)
    # SimCLR's CIFAR recipe in lightly's terms: jitter strength 0.5, no blur,
    # crops of 0.08-1 resized to 32 px, flip, grayscale 0.2; images stay in
    # [0, 1] as keras-ssl feeds them (no mean/std normalisation).
    transform = SimCLRTransform(
        input_size=32, cj_strength=0.5, gaussian_blur=0.0, min_scale=0.08, normalize=None
    )
    if args.views:
        views = [transform(Image.fromarray(image).convert("RGB"))[0].permute(1, 2, 0).numpy()
                 for image in images[:args.views]]
        np.save(args.output, np.stack(views).astype(np.float32))
        print(f"wrote {args.output}: {len(views)} views cut from the {args.train_images} images")
        return
    loader = torch.utils.data.DataLoader(
        _TwoViews(images, transform), batch_size=args.batch_size, shuffle=True, drop_last=True,
        num_workers=args.workers, persistent_workers=args.workers > 0,
        generator=torch.Generator().manual_seed(args.seed),
    )
    backbone = PreActResNet18()
    head = SimCLRProjectionHead(backbone.dim, backbone.dim, 128)
    criterion = NTXentLoss(temperature=args.temperature)
    # keras-ssl decays neither biases nor batch-norm parameters (the vectors);
    # the same split here keeps the two recipes equal.
    params = list(backbone.parameters()) + list(head.parameters())
    groups = [
        {"params": [p for p in params if p.ndim > 1], "weight_decay": args.weight_decay},
        {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
    ]
    lr = args.learning_rate * args.batch_size / 256
    optimizer = torch.optim.SGD(groups, lr=lr, momentum=0.9)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, args.steps) / args.steps))
    )
    if args.trajectory:
        # float64, so that float32 rounding (which grows step by step) does not
        # hide a difference between the two libraries' steps; float32 measures it.
        dtype = getattr(torch, args.trajectory)
        backbone.to(dtype), head.to(dtype)
        batches = [tuple(view.to(dtype) for view in batch)
                   for batch, _ in zip(loader, range(args.steps))]
        start_weights = _weights(backbone, head)
    else:
        batches = loader
        initial = {
            "train_step0": _features(backbone, arrays["train"]),
            "test_step0": _features(backbone, arrays["test"]),
        }
    step, start, losses = 0, time.time(), []
    while step < args.steps:
        for x1, x2 in batches:
            loss = criterion(head(backbone(x1)), head(backbone(x2)))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            losses.append(loss.item())
            if step % 10 == 0 or step == args.steps:
                rate = step * args.batch_size / (time.time() - start)
                print(f"step {step}/{args.steps} | loss {loss:.4f} | {rate:.1f} images/s", flush=True)
            if step == args.steps:
                break
    if args.trajectory:
        def stacked(i):
            return np.stack([b[i].permute(0, 2, 3, 1).numpy() for b in batches]).astype(np.float32)

        np.savez(args.output, view_1=stacked(0), view_2=stacked(1), losses=np.array(losses),
                 **{f"start/{k}": v for k, v in start_weights.items()},
                 **{f"end/{k}": v for k, v in _weights(backbone, head).items()},
                 info=json.dumps(dict(library="lightly", torch=torch.__version__,
                                      dtype=args.trajectory, steps=args.steps,
                                      batch_size=args.batch_size, seed=args.seed,
                                      learning_rate=lr, weight_decay=args.weight_decay,
                                      temperature=args.temperature)))
        print(f"wrote {args.output}: {args.steps} steps' views, losses and weights")
        return
    seconds = time.time() - start
    np.savez(
        args.output, **initial,
        train=_features(backbone, arrays["train"]), test=_features(backbone, arrays["test"]),
        train_labels=arrays["train_labels"], test_labels=arrays["test_labels"],
        info=json.dumps(dict(
            library="lightly", lightly=__import__("lightly").__version__,
            torch=torch.__version__, steps=args.steps, batch_size=args.batch_size,
            seed=args.seed, learning_rate=lr, weight_decay=args.weight_decay,
            train_images=args.train_images,
            temperature=args.temperature, train_seconds=seconds,
            first_loss=losses[0], last_loss=losses[-1],
        )),
    )
    print(f"wrote {args.output} ({seconds:.0f} s of training)")


if __name__ == "__main__":
    main()
