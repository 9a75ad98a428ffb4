"""The same network and the same on-device training step in PyTorch eager: the outside
reference of `benchmarks/device_step.py`.

The parent process writes the network as a spec (`write_spec`: layer list, configs and
weights, from the Keras model and the device trainer's choice of what trains), and a child
process with PyTorch only (no TensorFlow in its memory) builds and times it (`main`).

    python benchmarks/torch_reference.py SPEC.npz BATCH STEPS WARMUP THREADS
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

# Layer classes this reference rebuilds (those of the networks the benchmark times).
SUPPORTED = ("InputLayer", "Normalization", "Rescaling", "Conv2D", "DepthwiseConv2D", "BatchNormalization", "ReLU",
             "Activation", "Add", "GlobalAveragePooling2D", "Dense", "Dropout", "Flatten", "MaxPooling2D",
             "AveragePooling2D")


def write_spec(path: str, trainer) -> None:
    """Writes the device trainer's network, weights and settings for the torch child."""
    nodes, arrays = [], {}
    for node in trainer.nodes:
        if node.cls not in SUPPORTED:
            raise ValueError(f"layer {node.name!r} ({node.cls}): no PyTorch rule in this reference")
        cfg = {k: v for k, v in node.config.items() if isinstance(v, (int, float, str, bool, list, tuple, type(None)))}
        if node.cls == "Normalization":
            arrays[f"{node.name}/mean"] = node.config["_mean"]
            arrays[f"{node.name}/std"] = node.config["_std"]
        for weight, key in node.weights.items():
            arrays[f"{node.name}/{weight}"] = np.asarray(trainer._v(node, weight).numpy(), np.float32)
        nodes.append({"name": node.name, "cls": node.cls, "inputs": node.inputs, "config": cfg,
                      "weights": sorted(node.weights), "trainable": sorted(node.trainable)})
    meta = {"nodes": nodes, "output": trainer.output_layer, "input_shape": list(trainer.input_shape),
            "num_classes": trainer.num_classes, "bn_mode": trainer.options.bn_mode,
            "momentum": trainer.options.momentum, "weight_decay": trainer.options.weight_decay}
    np.savez(path, __meta__=np.asarray(json.dumps(meta)), **arrays)


def _same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def build(spec_path: str):
    """(module, parameter groups) of the spec's network in PyTorch, NCHW."""
    import torch
    import torch.nn.functional as F

    z = np.load(spec_path)
    meta = json.loads(str(z["__meta__"]))
    params = {}
    decay, no_decay = [], []

    def weight(node, name, layout=None):
        value = z[f"{node['name']}/{name}"]
        if layout is not None:
            value = np.ascontiguousarray(np.transpose(value, layout))
        t = torch.tensor(value)
        if name in node["trainable"]:
            t = torch.nn.Parameter(t)
            (decay if t.ndim >= 2 else no_decay).append(t)
        params[f"{node['name']}/{name}"] = t
        return t

    layers = {}
    for node in meta["nodes"]:
        c, cfg = node["cls"], node["config"]
        if c == "Conv2D":
            layers[node["name"]] = (weight(node, "kernel", (3, 2, 0, 1)),
                                    weight(node, "bias") if "bias" in node["weights"] else None)
        elif c == "DepthwiseConv2D":
            layers[node["name"]] = (weight(node, "kernel", (2, 3, 0, 1)),
                                    weight(node, "bias") if "bias" in node["weights"] else None)
        elif c == "Dense":
            layers[node["name"]] = (weight(node, "kernel", (1, 0)),
                                    weight(node, "bias") if "bias" in node["weights"] else None)
        elif c == "BatchNormalization":
            layers[node["name"]] = tuple(weight(node, w) if w in node["weights"] else None
                                         for w in ("gamma", "beta", "moving_mean", "moving_variance"))
        elif c == "Normalization":
            layers[node["name"]] = (torch.tensor(z[f"{node['name']}/mean"]).view(1, -1, 1, 1),
                                    torch.tensor(z[f"{node['name']}/std"]).view(1, -1, 1, 1))

    def act(name, x):
        return F.relu(x) if name == "relu" else F.relu6(x) if name == "relu6" else x

    batch_stats = meta["bn_mode"] == "batch"

    def forward(x):
        values = {}
        for node in meta["nodes"]:
            c, cfg, name = node["cls"], node["config"], node["name"]
            ins = [values[i] for i in node["inputs"]]
            h = ins[0] if ins else x
            if c in ("InputLayer", "Dropout"):
                out = h
            elif c == "Normalization":
                mean, std = layers[name]
                out = (h - mean) / std
            elif c == "Rescaling":
                out = h * float(cfg["scale"]) + float(cfg["offset"])
            elif c in ("Conv2D", "DepthwiseConv2D"):
                kernel, bias = layers[name]
                stride = int(cfg["strides"][0])
                if cfg["padding"] == "same":
                    pt, pb = _same_pad(h.shape[2], kernel.shape[2], stride)
                    pl, pr = _same_pad(h.shape[3], kernel.shape[3], stride)
                    h = F.pad(h, (pl, pr, pt, pb))
                groups = h.shape[1] if c == "DepthwiseConv2D" else 1
                out = act(cfg.get("activation"), F.conv2d(h, kernel, bias, stride=stride, groups=groups))
            elif c == "BatchNormalization":
                gamma, beta, mm, mv = layers[name]
                out = F.batch_norm(h, mm, mv, gamma, beta, training=batch_stats, momentum=1 - float(cfg["momentum"]),
                                   eps=float(cfg["epsilon"]))
            elif c == "ReLU":
                out = F.relu6(h) if cfg.get("max_value") == 6 else F.relu(h)
            elif c == "Activation":
                out = act(cfg["activation"], h)
            elif c == "Add":
                out = ins[0]
                for other in ins[1:]:
                    out = out + other
            elif c == "GlobalAveragePooling2D":
                out = h.mean(dim=(2, 3))
            elif c == "MaxPooling2D":
                out = F.max_pool2d(h, int(cfg["pool_size"][0]), int(cfg["strides"][0]))
            elif c == "AveragePooling2D":
                out = F.avg_pool2d(h, int(cfg["pool_size"][0]), int(cfg["strides"][0]))
            elif c == "Flatten":
                out = h.permute(0, 2, 3, 1).reshape(h.shape[0], -1)
            elif c == "Dense":
                kernel, bias = layers[name]
                out = F.linear(h, kernel, bias)
                if name != meta["output"]:
                    out = act(cfg.get("activation"), out)
            values[name] = out
        return values[meta["output"]]

    optimizer = torch.optim.SGD([{"params": decay, "weight_decay": meta["weight_decay"]},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=1e-4, momentum=meta["momentum"])
    return forward, optimizer, meta


def _hwm_mib() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main(argv) -> None:
    spec, batch, steps, warmup, threads = argv[1], int(argv[2]), int(argv[3]), int(argv[4]), int(argv[5])
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    forward, optimizer, meta = build(spec)
    h, w, c = meta["input_shape"]
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.uniform(0, 255, (batch, c, h, w)).astype(np.float32))
    y = torch.tensor(rng.integers(0, meta["num_classes"], batch))

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(forward(x), y)
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    print(json.dumps({"train_step_s": float(np.median(times)), "peak_rss_mib": _hwm_mib(),
                      "torch": torch.__version__}))


if __name__ == "__main__":
    main(sys.argv)
