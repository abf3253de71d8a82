#!/usr/bin/env python3
"""The PyTorch side of the peer comparison (scripts/bench-peers.sh).

    peers.py prepare --out DIR
        Writes the models every peer runs, into DIR:
          resnet20.onnx   our CIFAR-10 ResNet-20 (weights/cifar10-resnet20.safetensors)
                          in the option-A module of tests/pytorch_parity.py,
          resnet18.onnx   torchvision's resnet18() with random weights (seed 0),
          resnet18.safetensors  the same ResNet-18 in torchvision's layout,
                          which `Model::load` recognises (for our engine),
        each ONNX file exported with torch.onnx.export (opset 17, eval mode),
        and <model>.check.json: one fixed input and PyTorch's logits for it, which
        the ONNX Runtime Web page compares its own output with before timing.

    peers.py torch --out FILE [--reps N] [--warmup W] [--threads T,...] [--train-reps N]
        Times PyTorch on the CPU, once per thread count T (torch.set_num_threads;
        default 2 and 1: on a loaded machine two threads can be far slower than
        one, as a descheduled thread stalls the other at every barrier): ResNet-20
        and ResNet-18 eval-mode inference at batch 1, and a ResNet-20 training
        step at batch 128 (SGD with momentum 0.9, weight decay 1e-4, softmax
        cross-entropy, random images and labels). Each figure is the median of N
        runs after W warm-up runs. Writes JSON.

    peers.py torch-cuda --out FILE [--reps N] [--warmup W] [--batch B]
        The same ResNet-20 training step on the first CUDA device, in fp32
        (TF32 off for matrix products and cuDNN, cudnn.benchmark on), the
        clock stopped after torch.cuda.synchronize(): the baseline of issue 5's
        real-GPU goal (scripts/device-check.sh). Writes JSON.
"""

import argparse
import json
import os
import platform
import statistics
import struct
import sys
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F
import torchvision

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests"))
from pytorch_parity import CifarResNet  # noqa: E402  the engine's ResNet-20, option A

RESNET20_WEIGHTS = os.path.join(ROOT, "weights", "cifar10-resnet20.safetensors")
INPUT_SHAPES = {"resnet20": (3, 32, 32), "resnet18": (3, 224, 224)}


# --- safetensors, the few lines this needs -----------------------------------


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    header.pop("__metadata__", None)
    body = memoryview(data)[8 + length :]
    tensors = {}
    for name, info in header.items():
        if info["dtype"] != "F32":
            raise SystemExit(f"{path}: {name} is {info['dtype']}, expected F32")
        start, end = info["data_offsets"]
        tensors[name] = np.frombuffer(body[start:end], dtype="<f4").reshape(info["shape"]).copy()
    return tensors


def write_safetensors(path, tensors):
    """F32 tensors, no metadata: torchvision's layout as `Model::load` reads it."""
    header, offset, blobs = {}, 0, []
    for name, array in tensors.items():
        blob = np.ascontiguousarray(array, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(array.shape), "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for blob in blobs:
            f.write(blob)


# --- the models ---------------------------------------------------------------


def resnet20():
    """Our shipped CIFAR-10 ResNet-20, in tests/pytorch_parity.py's module."""
    model = CifarResNet(3, 10)
    tensors = read_safetensors(RESNET20_WEIGHTS)
    missing, unexpected = model.load_state_dict({k: torch.from_numpy(v) for k, v in tensors.items()}, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise SystemExit(f"{RESNET20_WEIGHTS} does not fit the ResNet-20 module: missing {missing}, unexpected {unexpected}")
    return model.eval()


def resnet18():
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval()


MODELS = {"resnet20": resnet20, "resnet18": resnet18}


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# --- prepare -------------------------------------------------------------------


def export(model, x, path):
    """ONNX opset 17 in eval mode. The TorchScript exporter writes opset 17
    directly (folding batch norm into the convolutions, as ONNX exporters do);
    torch's newer dynamo exporter cannot convert these graphs below opset 18,
    so it is only the fallback for a torch without the older one."""
    import onnx

    kwargs = dict(opset_version=17, input_names=["input"], output_names=["logits"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model, (x,), path, dynamo=False, **kwargs)
        except Exception as e:  # noqa: BLE001  no TorchScript exporter in this torch
            print(f"  the TorchScript exporter failed ({e}); using the dynamo exporter", file=sys.stderr)
            torch.onnx.export(model, (x,), path, dynamo=True, external_data=False, **kwargs)
    onnx.checker.check_model(path)
    return onnx.load(path).opset_import[0].version


def prepare(out):
    os.makedirs(out, exist_ok=True)
    for name, build in MODELS.items():
        model = build()
        generator = torch.Generator().manual_seed(1)
        x = torch.randn((1, *INPUT_SHAPES[name]), generator=generator)
        with torch.no_grad():
            logits = model(x)
        opset = export(model, x, os.path.join(out, f"{name}.onnx"))
        with open(os.path.join(out, f"{name}.check.json"), "w") as f:
            json.dump({"shape": list(x.shape), "input": x.flatten().tolist(), "logits": logits.flatten().tolist()}, f)
        if name == "resnet18":
            state = {k: v.numpy() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
            write_safetensors(os.path.join(out, "resnet18.safetensors"), state)
        print(f"  {name}: {name}.onnx (opset {opset}, {os.path.getsize(os.path.join(out, f'{name}.onnx')) >> 10} KiB)", file=sys.stderr)


# --- torch timings -------------------------------------------------------------


def timed(run, warmup, reps):
    for _ in range(warmup):
        run()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), times


def resnet20_training_step(device, batch):
    """One SGD step (the paper's recipe) of ResNet-20 on a fixed random batch,
    waiting for the device."""
    model = resnet20().train().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    images = torch.randn(batch, 3, 32, 32, device=device)
    labels = torch.randint(0, 10, (batch,), device=device)

    def step():
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return step


def bench_torch_cuda(reps, warmup, batch):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    device = torch.device("cuda")
    median, times = timed(resnet20_training_step(device, batch), warmup, reps)
    name = torch.cuda.get_device_name(device)
    print(f"  torch CUDA fp32 ({name}) resnet20 train b{batch}: {median:.2f} ms ({batch * 1e3 / median:.0f} img/s)", file=sys.stderr)
    return {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "gpu": name,
        "results": [{"workload": f"resnet20 train b{batch}", "precision": "fp32 (TF32 off)", "median_ms": median, "images_per_s": batch * 1e3 / median, "times_ms": times, "reps": reps, "warmup": warmup}],
    }


def bench_torch(reps, warmup, threads, train_reps):
    """Every workload at each thread count in `threads`."""
    results = []
    for count in threads:
        torch.set_num_threads(count)
        for name in ("resnet20", "resnet18"):
            model = MODELS[name]()
            x = torch.randn((1, *INPUT_SHAPES[name]))

            def infer():
                with torch.inference_mode():
                    model(x)

            median, times = timed(infer, warmup, reps)
            results.append({"workload": f"{name} infer b1", "threads": count, "median_ms": median, "times_ms": times, "reps": reps, "warmup": warmup})
            print(f"  torch ({count} threads) {name} infer b1: {median:.2f} ms", file=sys.stderr)

        train_warmup = min(warmup, 2)
        median, times = timed(resnet20_training_step(torch.device("cpu"), 128), train_warmup, train_reps)
        results.append({"workload": "resnet20 train b128", "threads": count, "median_ms": median, "times_ms": times, "reps": train_reps, "warmup": train_warmup})
        print(f"  torch ({count} threads) resnet20 train b128: {median:.1f} ms ({128e3 / median:.1f} img/s)", file=sys.stderr)
    return {"torch": torch.__version__, "cpu": cpu_name(), "cpus": os.cpu_count(), "results": results}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--out", required=True)
    t = sub.add_parser("torch")
    t.add_argument("--out", required=True)
    t.add_argument("--reps", type=int, default=30)
    t.add_argument("--warmup", type=int, default=3)
    t.add_argument("--threads", default="2,1", help="comma-separated thread counts, each measured")
    t.add_argument("--train-reps", type=int, default=5)
    c = sub.add_parser("torch-cuda")
    c.add_argument("--out", required=True)
    c.add_argument("--reps", type=int, default=50)
    c.add_argument("--warmup", type=int, default=10)
    c.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    if args.command == "prepare":
        prepare(args.out)
        return 0
    if args.command == "torch":
        threads = [int(t) for t in args.threads.split(",")]
        report = bench_torch(args.reps, args.warmup, threads, args.train_reps)
    else:
        report = bench_torch_cuda(args.reps, args.warmup, args.batch)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
