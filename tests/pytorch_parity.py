#!/usr/bin/env python3
"""Golden files for the PyTorch parity test (engine/tests/pytorch_parity.rs).

Run by hand, not by CI; it needs torch and torchvision from pip:

    python3 -m venv /tmp/torch-venv
    /tmp/torch-venv/bin/pip install torch torchvision numpy
    /tmp/torch-venv/bin/python tests/pytorch_parity.py [--check-only]

For three networks -- the CIFAR ResNet-20 with option-A shortcuts (defined
below exactly as the engine builds it), torchvision's resnet18 and resnet50
(weights=None, then overwritten) -- it writes tests/fixtures/pytorch/<model>.json
with
  - the eval-mode logits (running statistics) of a fixed input batch;
  - one train-mode step (batch statistics): the mean softmax cross-entropy loss
    for fixed labels, and for every parameter gradient its sum, sum of absolute
    values, sum of squares and a fixed sample of elements (15 positions drawn
    from the generator below, plus the largest-magnitude one); the whole
    gradient of tensors of at most FULL_MAX elements.

No weights are stored: every parameter, running statistic and input is a
pure function of its name, generated identically here and in the Rust test.
Each tensor is the stream of engine::rng::Rng (SplitMix64) seeded with the
64-bit FNV-1a hash of "<model>/<tensor name>" (torchvision's names, which the
engine uses too), mapped to uniform [lo, hi) as Rng::range does and rounded
to f32 (see `uniform`). Ranges: conv and fc weights +-sqrt(6 / fan_in) (He
variance 2 / fan_in); fc bias +-1/sqrt(fan_in); BN gamma [0.5, 1.5), beta
[-0.2, 0.2); running mean [-0.2, 0.2), running variance [0.5, 2) -- non-trivial
so that eval mode exercises them; inputs [-1, 1). The last BN of every residual
branch (bn2 of basic blocks, bn3 of bottlenecks) gets gamma [0.1, 0.3): with
the running statistics unrelated to the real activation statistics nothing
normalises eval mode, and full-size branches would double the residual stream
block after block (ResNet-50's eval logits would reach ~1e3).

The goldens are computed in float64 (the f32 values above, converted
exactly), so they are the exact answer for those inputs; the script also runs
the same computation in torch's float32 and records, beside each golden, how
far torch's own f32 result is from it (`torch_f32_*`): the noise floor that
the engine's f32 result is judged against.

Every ReLU input of the train step is kept at least 3e-4 x its RMS away
from zero, and every max-pool window's top two values 3e-5 x RMS apart, by
moving a few hundred BN biases (listed in the fixture as `bias_overrides`) and,
if need be, drawing the train input again: see `fit_margins` for why.

Train-mode sizes: batch 8 at 64x64 pixels for the ImageNet nets, so that
layer4's batch norms see 8 x 2 x 2 = 32 values per channel. (The f32 rounding
of batch statistics is not the problem it might seem even at 8 values: torch
f32 against f64 at batch 2 differs by at most 5e-4 x a gradient's RMS. What
moves f32 gradients by percents is a flipped ReLU, whose effect a batch norm
spreads over its channel, the more the fewer values it has.)

Fixture size: ~230 KB for the three models. Regenerating takes ~2 minutes on
two CPU cores; the values depend on torch only through its float64 arithmetic,
so another torch version should change them by ~1e-12 at most.
"""

import argparse
import json
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "fixtures", "pytorch")

# Whole gradients are stored for tensors up to this many elements (per model).
FULL_MAX = {"resnet20": 1024, "resnet18": 0, "resnet50": 0}
SAMPLES = 15

MODELS = {
    # name: (classes, eval batch, eval image size, train batch, train image size)
    "resnet20": (10, 4, 32, 8, 32),
    "resnet18": (1000, 2, 224, 8, 64),
    "resnet50": (1000, 2, 224, 8, 64),
}

# --- the generator, bit-exact with engine::rng::Rng -------------------------

MASK = (1 << 64) - 1


def fnv1a64(text):
    h = 0xCBF29CE484222325
    for byte in text.encode():
        h = ((h ^ byte) * 0x100000001B3) & MASK
    return h


def splitmix64(seed, n):
    """The first n outputs of Rng::new(seed).next_u64(): output i mixes
    seed + (i + 1) * 0x9E3779B97F4A7C15 (wrapping), so it vectorises."""
    i = np.arange(1, n + 1, dtype=np.uint64)
    z = np.uint64(seed) + i * np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def uniform(key, n, lo, hi):
    """n values of Rng::new(fnv1a64(key)).range(lo, hi), rounded to f32."""
    u = (splitmix64(fnv1a64(key), n) >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    return (lo + (hi - lo) * u).astype(np.float32)


def tensor_range(name, shape, fc_in, bottleneck):
    """The [lo, hi) of a parameter or statistic, from its name and shape;
    `fc_in` is the classifier's fan-in, `bottleneck` the block type."""
    module, leaf = name.rsplit(".", 1)
    if len(shape) >= 2:  # convolution or fc weight: He-uniform
        bound = np.sqrt(6.0 / np.prod(shape[1:]))
        return -bound, bound
    if module == "fc":
        bound = 1.0 / np.sqrt(fc_in)
        return -bound, bound
    if leaf == "running_mean":
        return -0.2, 0.2
    if leaf == "running_var":
        return 0.5, 2.0
    if leaf == "bias":
        return -0.2, 0.2
    assert leaf == "weight", name
    last_bn = "bn3" if bottleneck else "bn2"
    if module.startswith("layer") and module.endswith("." + last_bn):
        return 0.1, 0.3
    return 0.5, 1.5


# --- the CIFAR ResNet-20, option A, as engine/src/network/resnet.rs builds it --


class ShortcutA(nn.Module):
    """x[:, :, ::2, ::2], then (out - in) / 2 zero channels in front and the
    rest behind (the published reference weights' convention)."""

    def __init__(self, in_planes, planes, stride):
        super().__init__()
        self.stride, self.before = stride, (planes - in_planes) // 2
        self.after = planes - in_planes - self.before

    def forward(self, x):
        return F.pad(x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, self.before, self.after))


class BasicBlock(nn.Module):
    def __init__(self, in_planes, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        reshapes = stride != 1 or in_planes != planes
        self.shortcut = ShortcutA(in_planes, planes, stride) if reshapes else nn.Identity()
        self.relu = nn.ReLU()  # a module, as in torchvision, so hooks see it

    def forward(self, x):
        h = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(h)) + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, n, classes):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        in_planes = 16
        for stage, planes in enumerate([16, 32, 64]):
            blocks = []
            for block in range(n):
                stride = 2 if stage > 0 and block == 0 else 1
                blocks.append(BasicBlock(in_planes, planes, stride))
                in_planes = planes
            setattr(self, f"layer{stage + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(64, classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def build(model_name, overrides=None):
    """The generated model; `overrides` ({bias name: [[channel, value], ...]})
    replaces some batch-norm biases (see `fit_margins`)."""
    classes = MODELS[model_name][0]
    if model_name == "resnet20":
        model = CifarResNet(3, classes)
    else:
        model = getattr(torchvision.models, model_name)(weights=None, num_classes=classes)
    fc_in, bottleneck = model.fc.in_features, model_name == "resnet50"
    with torch.no_grad():
        state = model.state_dict()
        for name, tensor in state.items():
            if name.endswith("num_batches_tracked"):
                continue
            lo, hi = tensor_range(name, tuple(tensor.shape), fc_in, bottleneck)
            values = uniform(f"{model_name}/{name}", tensor.numel(), lo, hi)
            tensor.copy_(torch.from_numpy(values).reshape(tensor.shape))
        for name, changes in (overrides or {}).items():
            for channel, value in changes:
                state[name][channel] = value
    return model


def inputs(key, batch, size):
    return torch.from_numpy(uniform(key, batch * 3 * size * size, -1.0, 1.0)).reshape(batch, 3, size, size)


def labels(model_name, batch, classes):
    # Rng::below(classes) on the "<model>/train.labels" stream.
    u = (splitmix64(fnv1a64(f"{model_name}/train.labels"), batch) >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    return [int(v * classes) % classes for v in u]


# --- keeping the train step away from ReLU and max-pool discontinuities ------
#
# A ReLU whose input is within f32 rounding of zero may switch the other way in
# f32: that one element's gradient is then passed or blocked, and the batch
# norm before it spreads the change over its channel. With millions of ReLU
# inputs (ResNet-50 here: 6.8 M, the closest 8e-8 x RMS from zero) some do
# flip: two such flips moved the engine's layer1-layer3.3 gradients by up to
# 0.7 x RMS from the float64 goldens, with nothing wrong in either. The same
# holds for a max-pool window whose two largest values nearly tie. So the
# train step is made well-conditioned: batch-norm biases are shifted (per
# channel, by the least that works, and only where needed) until every ReLU
# input is at least RELU_MARGIN x its RMS away from zero, and the input is
# drawn again until every max-pool window's top two values differ by at least
# POOL_MARGIN x RMS. The fixture records how far above torch f32's worst error
# at those points the margins are (`torch_f32_margin_safety`); they are set
# well above it, since the engine's f32 forward is a few times less accurate
# than torch's (its GEMMs sum long rows in order: eval logits 6e-6 x RMS from
# float64 against torch's 1e-6). Comparing the max pool's top-two gap, not its
# values, matters: both values share the batch-norm statistics' rounding.

RELU_MARGIN = 3e-4
POOL_MARGIN = 3e-5


def channels_of(x):
    return x.detach().transpose(0, 1).reshape(x.shape[1], -1)


def least_shift(values, gap):
    """The s nearest 0 with |v + s| >= gap for every v in `values`."""
    points = np.sort(-values)
    lo, hi = points - gap, points + gap
    # Merge the forbidden intervals [lo, hi] and find the one holding 0.
    start, end = lo[0], hi[0]
    for a, b in zip(lo[1:], hi[1:]):
        if a > end:
            if start <= 0 <= end:
                break
            start = a
        end = max(end, b)
    if not start <= 0 <= end:
        return 0.0
    return start if -start < end else end


def pool_gaps(x, y=None):
    """The gaps between the two largest values of each 3x3 stride-2 window of
    `x` with a positive maximum (windows of zeros route nothing back); with
    `y`, also the gaps of `y` between the same two positions."""
    windows = lambda t: F.unfold(F.pad(t.detach(), (1, 1, 1, 1), value=-1e30), 3, stride=2).reshape(
        t.shape[0], t.shape[1], 9, -1
    )
    top, at = windows(x).topk(2, dim=2)
    live = top[:, :, 0] > 0
    gaps = (top[:, :, 0] - top[:, :, 1])[live]
    if y is None:
        return gaps
    pair = windows(y).gather(2, at)
    return gaps, (pair[:, :, 0] - pair[:, :, 1])[live]


def pool_gap(x):
    return float(pool_gaps(x).min())


def rms(x):
    return float(x.detach().double().pow(2).mean().sqrt())


def watch(model, on_relu, on_pool):
    """Calls on_relu(input, last batch norm's name) before every ReLU and
    on_pool(input) before the max pool; a non-None result replaces the input."""
    last_bn = [None]
    handles = []
    for name, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            handles.append(m.register_forward_hook(lambda m, i, o, name=name: last_bn.__setitem__(0, name)))
        elif isinstance(m, nn.ReLU):
            handles.append(m.register_forward_pre_hook(lambda m, args: on_relu(args[0], last_bn[0])))
        elif isinstance(m, nn.MaxPool2d):
            handles.append(m.register_forward_pre_hook(lambda m, args: on_pool(args[0])))
    return handles


def shift_biases(model, forward):
    """Runs `forward(model)` in float64, shifting the bias of the batch norm
    before each ReLU, per channel where needed, so that no ReLU input is within
    RELU_MARGIN x RMS of zero. Shifting a bias shifts that channel of the
    following ReLU's input, which is what the hook does in flight, so later
    layers see the shifted values. Returns the new biases ({name: [[channel,
    value], ...]}) and the max pool's smallest top-two gap over RMS."""
    overrides, gaps = {}, []

    def on_relu(x, bn_name):
        margin = RELU_MARGIN * rms(x)
        values = channels_of(x)
        close = (values.abs() < margin).any(dim=1).nonzero().flatten().tolist()
        if not close:
            return None
        bias = model.get_submodule(bn_name).bias
        shift = torch.zeros(x.shape[1], dtype=x.dtype)
        for c in close:
            old = float(bias[c])
            # A little beyond the margin, so f32 rounding of the bias cannot matter.
            new = float(np.float32(old + least_shift(values[c].numpy(), 1.25 * margin)))
            shift[c] = new - old
            overrides.setdefault(f"{bn_name}.bias", []).append([c, new])
        return (x + shift.view(1, -1, 1, 1),)

    def on_pool(x):
        gaps.append(pool_gap(x) / rms(x))

    handles = watch(model, on_relu, on_pool)
    with torch.no_grad():
        forward(model)
    for h in handles:
        h.remove()
    return overrides, min(gaps, default=np.inf)


def fit_margins(model_name):
    """The train input's key and the bias overrides that keep the float64
    train-mode forward RELU_MARGIN / POOL_MARGIN away from discontinuities.
    Inputs are drawn from "<model>/train.input", then ".1", ".2", ... until
    the max pool has no near-tie (only the stem before it needs to run)."""
    classes, _, _, batch, size = MODELS[model_name]
    for attempt in range(1000):
        key = f"{model_name}/train.input" + (f".{attempt}" if attempt else "")
        x = inputs(key, batch, size).double()
        model = build(model_name).double().train()
        if hasattr(model, "maxpool"):
            _, gap = shift_biases(model, lambda m: m.maxpool(m.relu(m.bn1(m.conv1(x)))))
            if gap < POOL_MARGIN:
                continue
        overrides, _ = shift_biases(build(model_name).double().train(), lambda m: m(x))
        if attempt:
            print(f"  {model_name}: {attempt} train inputs drawn again for the max pool", flush=True)
        return key, overrides
    raise RuntimeError("no input without max-pool near-ties")


# --- running it ---------------------------------------------------------------


def run(model_name, dtype, train_key, overrides):
    """Eval logits, train loss, train logits, gradients and the margins of the
    train step's ReLU and max-pool inputs, in `dtype`."""
    classes, eval_batch, eval_size, train_batch, train_size = MODELS[model_name]
    model = build(model_name, overrides).to(dtype)
    model.eval()
    with torch.no_grad():
        eval_logits = model(inputs(f"{model_name}/eval.input", eval_batch, eval_size).to(dtype))
    model.train()
    seen = []  # (kind, input) of every ReLU and max pool, in order
    handles = watch(
        model,
        lambda x, _: seen.append(("relu", x.detach().double().clone())),
        lambda x: seen.append(("pool", x.detach().double().clone())),
    )
    target = labels(model_name, train_batch, classes)
    logits = model(inputs(train_key, train_batch, train_size).to(dtype))
    for h in handles:
        h.remove()
    loss = F.cross_entropy(logits, torch.tensor(target))
    loss.backward()
    grads = {name: p.grad.detach().double().flatten().numpy() for name, p in model.named_parameters()}
    return {
        "eval_logits": eval_logits.double().flatten().numpy(),
        "loss": float(loss.detach()),
        "train_logits": logits.detach().double().flatten().numpy(),
        "labels": target,
        "grads": grads,
        "seen": seen,
    }


def margins(exact, f32):
    """The float64 margins of the ReLU and max-pool inputs, and the smallest
    ratio of a margin to torch f32's worst error at that point."""
    relu, pool, safety = np.inf, np.inf, np.inf
    for (kind, x), (_, y) in zip(exact["seen"], f32["seen"]):
        scale = rms(x)
        if kind == "relu":
            margin, err = float(x.abs().min()) / scale, float((x - y).abs().max()) / scale
            relu = min(relu, margin)
        else:
            # What decides a window is the difference of its top two, whose
            # error is mostly far smaller than the values' (both share the BN
            # statistics' error), so each window's own ratio counts.
            gaps, f32_gaps = pool_gaps(x, y)
            pool = min(pool, float(gaps.min()) / scale)
            safety = min(safety, float((gaps / (gaps - f32_gaps).abs()).min()))
            continue
        safety = min(safety, margin / err)
    return relu, pool, safety


def rel_err(got, want, scale):
    return float(np.max(np.abs(got - want)) / scale)


def golden(model_name):
    classes, eval_batch, eval_size, train_batch, train_size = MODELS[model_name]
    train_key, overrides = fit_margins(model_name)
    exact = run(model_name, torch.float64, train_key, overrides)
    f32 = run(model_name, torch.float32, train_key, overrides)
    relu_margin, pool_margin, safety = margins(exact, f32)
    assert relu_margin >= RELU_MARGIN and pool_margin >= POOL_MARGIN, (relu_margin, pool_margin)
    logits_rms = float(np.sqrt(np.mean(exact["eval_logits"] ** 2)))
    grads = {}
    worst_grad = (0.0, "")
    for name, g in exact["grads"].items():
        n = g.size
        u = (splitmix64(fnv1a64(f"{model_name}/{name}.samples"), SAMPLES) >> np.uint64(11)).astype(np.float64)
        index = sorted(set(int(v) for v in u / float(1 << 53) * n) | {int(np.argmax(np.abs(g)))})
        rms = float(np.sqrt(np.mean(g**2)))
        d = f32["grads"][name] - g
        entry = {
            "len": n,
            "sum": float(g.sum()),
            "abs_sum": float(np.abs(g).sum()),
            "sq_sum": float((g**2).sum()),
            "index": index,
            "value": [float(g[i]) for i in index],
            # torch f32's own worst element error, relative to this tensor's RMS.
            "torch_f32_max_err_over_rms": float(np.max(np.abs(d)) / rms) if rms > 0 else 0.0,
        }
        if n <= FULL_MAX[model_name]:
            entry["full"] = [float(v) for v in g]
        if entry["torch_f32_max_err_over_rms"] > worst_grad[0]:
            worst_grad = (entry["torch_f32_max_err_over_rms"], name)
        grads[name] = entry
    state = build(model_name).state_dict()
    fixture = {
        "about": "Golden values from tests/pytorch_parity.py (float64); see its docstring.",
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "model": model_name,
        "classes": classes,
        # The first values the generator gives two tensors: the Rust side must
        # reproduce them bit for bit before anything else is worth comparing.
        "generator_check": {
            name: [float(v) for v in state[name].flatten()[:4]] for name in ("conv1.weight", "bn1.running_var")
        },
        "eval": {
            "batch": eval_batch,
            "image": eval_size,
            "logits": [float(v) for v in exact["eval_logits"]],
            "torch_f32_max_err_over_rms": rel_err(f32["eval_logits"], exact["eval_logits"], logits_rms),
        },
        # Batch-norm biases replaced after generation, [[channel, value], ...]
        # per tensor (see fit_margins); they hold in eval mode too.
        "bias_overrides": overrides,
        "train": {
            "batch": train_batch,
            "image": train_size,
            "input": train_key,
            # Smallest |ReLU input| and max-pool top-two gap of the float64
            # train step, over the RMS of that input, and the smallest ratio
            # of such a margin to torch f32's error there.
            "relu_margin": relu_margin,
            "pool_margin": pool_margin if pool_margin < np.inf else None,
            "torch_f32_margin_safety": safety,
            "labels": exact["labels"],
            "loss": exact["loss"],
            "torch_f32_loss_err": abs(f32["loss"] - exact["loss"]),
            "grads": grads,
        },
    }
    if train_batch * classes <= 1000:
        fixture["train"]["logits"] = [float(v) for v in exact["train_logits"]]
    print(
        f"{model_name}: eval logits rms {logits_rms:.3g} (max |logit| {np.max(np.abs(exact['eval_logits'])):.3g}), "
        f"torch f32 max err / rms {fixture['eval']['torch_f32_max_err_over_rms']:.2e}; "
        f"loss {exact['loss']:.6f} (torch f32 err {fixture['train']['torch_f32_loss_err']:.1e}); "
        f"gradients: torch f32 worst max err / rms {worst_grad[0]:.2e} ({worst_grad[1]}); "
        f"{sum(map(len, overrides.values()))} biases shifted, train input {train_key}, margins: ReLU {relu_margin:.1e}, "
        f"max pool {pool_margin:.1e}, >= {safety:.0f} x torch f32's error",
        flush=True,
    )
    return fixture


def compact(value):
    """JSON with floats at 9 significant digits (more than f32 resolves)."""
    return json.dumps(
        json.loads(json.dumps(value), parse_float=lambda s: float(f"{float(s):.9g}")), separators=(",", ":")
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check-only", action="store_true", help="print the summaries, write nothing")
    parser.add_argument("models", nargs="*", default=list(MODELS))
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    os.makedirs(OUT, exist_ok=True)
    for model_name in args.models:
        fixture = golden(model_name)
        if not args.check_only:
            path = os.path.join(OUT, f"{model_name}.json")
            with open(path, "w") as f:
                f.write(compact(fixture) + "\n")
            print(f"  wrote {os.path.relpath(path)} ({os.path.getsize(path) // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
