"""edgekt.export: builtin-only gradients, TFLite parity with TF, signatures, options, op check."""

from __future__ import annotations

import json
import os
import subprocess

import keras
import numpy as np
import pytest
import tensorflow as tf

from edgekt import models
from edgekt.export import (DeviceTrainer, NonBuiltinOpsError, TrainerOptions, UnsupportedOnDeviceError,
                           check_builtin_only, convert_trainer, list_ops)
from edgekt.models import saving
from edgekt.prune import build_graph, prune_model

from conftest import REPO_ROOT
from prune_models import mobilenet_style, randomize_batchnorm, vgg_style

B = 8


def _batch(seed, n=B, k=10):
    rng = np.random.default_rng(seed)
    return (rng.uniform(0, 255, (n, 32, 32, 3)).astype(np.float32), rng.integers(0, k, n).astype(np.int32))


def _pruned_wrn():
    keras.utils.set_random_seed(0)
    model = models.wrn(10, 1)
    randomize_batchnorm(model)
    graph = build_graph(model)
    rng = np.random.default_rng(0)
    keep = {g.id: np.sort(rng.choice(g.channels, max(2, g.channels * 2 // 3), replace=False))
            for g in graph.prunable_groups()}
    return prune_model(model, keep, graph)


def _vgg():
    keras.utils.set_random_seed(1)
    model = vgg_style(dropout=0.0)
    randomize_batchnorm(model)
    return model


@pytest.mark.parametrize("builder", [_pruned_wrn, _vgg, mobilenet_style], ids=["pruned_wrn", "vgg", "mobilenet"])
def test_device_gradients_equal_tf_autodiff_of_the_keras_model(builder):
    model = builder()
    x, y = _batch(0)
    with tf.GradientTape() as tape:
        logits = model(x, training=True)
        loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True))
    reference = dict(zip([v.path for v in model.trainable_variables], tape.gradient(loss, model.trainable_variables)))
    trainer = DeviceTrainer(model, TrainerOptions(batch_size=B))
    variables = [trainer.variables_by_key[k] for k in trainer.trainable_keys]
    with tf.GradientTape() as tape:
        tape.watch(variables)
        z, _ = trainer.forward(tf.constant(x), True, tf.ones([B]))
        device_loss = tf.reduce_mean(-tf.reduce_sum(tf.one_hot(y, 10) * tf.nn.log_softmax(z), axis=-1))
    grads = tape.gradient(device_loss, variables)
    assert float(device_loss) == pytest.approx(float(loss), rel=1e-5)
    scale = max(float(np.abs(g).max()) for g in reference.values())
    for key, g in zip(trainer.trainable_keys, grads):
        layer, weight = key.split("__")
        np.testing.assert_allclose(g.numpy(), reference[f"{layer}/{weight}"].numpy(), atol=1e-5 * scale, rtol=1e-4,
                                   err_msg=key)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The pruned WRN and the VGG-style model, each exported (batch 8) and converted."""
    out = {}
    for name, builder in (("pruned_wrn", _pruned_wrn), ("vgg", _vgg)):
        model = builder()
        trainer = DeviceTrainer(model, TrainerOptions(batch_size=B))
        tflite = convert_trainer(trainer)
        path = tmp_path_factory.mktemp(name) / "model.tflite"
        path.write_bytes(tflite)
        out[name] = (model, tflite, str(path))
    return out


def _real_batches(cifar, steps, n=B):
    """Shuffled real test images and labels, one batch per step; every 5th batch is short
    (its last two examples are padding with weight 0)."""
    order = np.random.default_rng(0).permutation(len(cifar["test"].labels))
    for step in range(steps):
        idx = order[step * n:(step + 1) * n]
        w = np.ones(n, np.float32)
        if step % 5 == 4:
            w[-2:] = 0.0
        yield cifar["test"].images[idx].astype(np.float32), cifar["test"].labels[idx].astype(np.int32), w


@pytest.mark.parametrize("name", ["pruned_wrn", "vgg"])
def test_twenty_tflite_train_steps_equal_tf(exported, name, cifar):
    """Same batches, same start: losses and final weights of TFLite and TF agree to 1e-4.

    A small learning rate keeps the comparison about the arithmetic: with large steps, SGD
    on BN nets amplifies float rounding (1e-7) by ~2x per step in TF alone.
    """
    from ai_edge_litert.interpreter import Interpreter

    model, tflite, _ = exported[name]
    reference = DeviceTrainer(model, TrainerOptions(batch_size=B))
    interpreter = Interpreter(model_content=tflite)
    runner = interpreter.get_signature_runner("train")
    lr = np.full(1, 0.002, np.float32)
    for step, (x, y, w) in enumerate(_real_batches(cifar, 20)):
        lite = runner(x=x, y=y, w=w, lr=lr)
        ref = reference.train(x, y, w, lr)
        assert float(lite["loss"]) == pytest.approx(float(ref["loss"]), rel=1e-4), step
    lite_weights = interpreter.get_signature_runner("get_weights")()
    worst = 0.0
    for key, value in reference.weights_numpy().items():
        # Relative error of each tensor as a whole. Momentum slots hold sums of gradients,
        # whose rounding differences are larger relative to their size.
        # The floor covers values that stay ~0 (a conv bias before BN gets no real gradient).
        err = np.linalg.norm(lite_weights[key] - value) / max(np.linalg.norm(value), 1e-2)
        assert err < (1e-2 if key.endswith("__momentum") else 1e-4), (key, err)
        if not key.endswith("__momentum"):
            worst = max(worst, err)
    print(f"{name}: worst relative weight error after 20 steps {worst:.2e}")


def test_only_builtin_ops_and_the_checker_catches_flex(exported):
    _, tflite, _ = exported["pruned_wrn"]
    counts = check_builtin_only(tflite)
    assert counts["CONV_2D"] > 0 and counts["TRANSPOSE_CONV"] > 0 and not any(k.startswith("Flex") for k in counts)

    @tf.function(input_signature=[tf.TensorSpec([1, 4, 4, 2]), tf.TensorSpec([1, 4, 4, 3])])
    def filter_grad(x, dy):
        return tf.raw_ops.Conv2DBackpropFilter(input=x, filter_sizes=[1, 1, 2, 3], out_backprop=dy,
                                              strides=[1, 1, 1, 1], padding="SAME")

    converter = tf.lite.TFLiteConverter.from_concrete_functions([filter_grad.get_concrete_function()])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
    flex = converter.convert()
    assert "FlexConv2DBackpropFilter" in list_ops(flex)
    with pytest.raises(NonBuiltinOpsError, match="FlexConv2DBackpropFilter"):
        check_builtin_only(flex)


def test_no_signature_takes_a_0d_input(exported):
    """ai-edge-litert 2.3 crashes on aarch64 when a 0-d input is set: the rate and the
    temperature are [1] tensors."""
    from ai_edge_litert.interpreter import Interpreter

    _, tflite, _ = exported["pruned_wrn"]
    interpreter = Interpreter(model_content=tflite)
    shapes = {(sig, name): list(d["shape"]) for sig in ("train", "distill")
              for name, d in interpreter.get_signature_runner(sig).get_input_details().items()}
    assert shapes[("train", "lr")] == [1] and shapes[("distill", "lr")] == [1]
    assert shapes[("distill", "temperature")] == [1]
    assert all(len(shape) >= 1 for shape in shapes.values()), shapes


def test_padding_examples_do_not_change_the_step():
    model = _pruned_wrn()
    x, y = _batch(3)
    w = np.array([1, 1, 1, 1, 1, 0, 0, 0], np.float32)
    a = DeviceTrainer(model, TrainerOptions(batch_size=B))
    b = DeviceTrainer(model, TrainerOptions(batch_size=B))
    x2, y2 = x.copy(), y.copy()
    x2[5:] = 255.0 - x2[5:]
    y2[5:] = (y2[5:] + 1) % 10
    la = a.train(x, y, w, np.full(1, 0.05, np.float32))
    lb = b.train(x2, y2, w, np.full(1, 0.05, np.float32))
    assert float(la["loss"]) == pytest.approx(float(lb["loss"]), rel=1e-6)
    for k, v in a.weights_numpy().items():
        np.testing.assert_allclose(v, b.weights_numpy()[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_trainable_subsets_and_frozen_bn():
    model = _pruned_wrn()
    x, y = _batch(4)
    trainer = DeviceTrainer(model, TrainerOptions(batch_size=B, trainable="bn_classifier", bn_mode="frozen"))
    before = trainer.weights_numpy()
    trainer.train(x, y, np.ones(B, np.float32), np.full(1, 0.1, np.float32))
    after = trainer.weights_numpy()
    assert np.array_equal(before["stem_conv__kernel"], after["stem_conv__kernel"])
    assert np.array_equal(before["final_bn__moving_mean"], after["final_bn__moving_mean"])
    assert not np.array_equal(before["logits__kernel"], after["logits__kernel"])
    assert not np.array_equal(before["final_bn__gamma"], after["final_bn__gamma"])
    last = DeviceTrainer(model, TrainerOptions(batch_size=B, trainable="last:2"))
    assert set(last.trainable_keys) >= {"logits__kernel", "stage3_block1_conv2__kernel"}
    assert "stage3_block1_conv1__kernel" not in last.trainable_keys


def test_growing_the_classifier_keeps_old_outputs():
    model = _pruned_wrn()
    x, _ = _batch(5)
    trainer = DeviceTrainer(model, TrainerOptions(batch_size=B, num_classes=12))
    out = trainer.infer(x)
    assert out["logits"].shape == (B, 12)
    np.testing.assert_allclose(out["logits"].numpy()[:, :10], np.asarray(model(x)), rtol=1e-4, atol=1e-4)
    trainer.train(x, np.full(B, 11, np.int32), np.ones(B, np.float32), np.full(1, 0.1, np.float32))


def test_unsupported_layers_are_named():
    inp = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3, dilation_rate=2, name="dilated")(inp)
    out = keras.layers.Dense(10, name="logits")(keras.layers.GlobalAveragePooling2D()(x))
    with pytest.raises(UnsupportedOnDeviceError, match=r"layer 'dilated' \(Conv2D\) cannot be trained on the device: "
                                                       r"dilated convolutions"):
        DeviceTrainer(keras.Model(inp, out))
    with pytest.raises(ValueError, match=r"trainable='last': must be 'all', 'bn_classifier', 'classifier' or 'last:N'"):
        TrainerOptions(trainable="last")


def test_export_writes_files_metadata_and_an_accurate_int8_model(tmp_path, small_cifar):
    model = _pruned_wrn()
    model_path = saving.save_model(model, str(tmp_path / "pruned.keras"))
    from edgekt.export import pipeline

    splits = small_cifar.__class__({"train": small_cifar["train"], "test": small_cifar["test"]},
                                   small_cifar.class_names, "small")
    # A 3-class copy of the model so class names line up with the small data set.
    three = keras.Model(model.input, keras.layers.Dense(3, name="head")(model.get_layer("pool").output))
    three_path = saving.save_model(three, str(tmp_path / "three.keras"))
    metrics = pipeline.export_model(three_path, str(tmp_path / "exp"), data_source=splits, batch_size=4)
    meta = json.loads((tmp_path / "exp" / "model_meta.json").read_text())
    assert meta["class_names"] == list(small_cifar.class_names) and meta["batch_size"] == 4
    assert set(meta["signatures"]) == {"train", "distill", "infer", "get_weights", "set_weights"}
    assert meta["signatures"]["train"]["inputs"]["x"]["shape"] == [4, 32, 32, 3]
    assert meta["input"]["pixel_range"] == [0, 255]
    assert metrics["trainable_test_accuracy"] == pytest.approx(metrics["keras_test_accuracy"], abs=1e-6)
    assert abs(metrics["inference_test_accuracy"] - metrics["keras_test_accuracy"]) <= 0.25
    assert metrics["inference_bytes"] < metrics["keras_bytes"]
    assert os.path.exists(model_path)


def test_tflite_runtime_214_runs_the_train_signature(exported, tmp_path):
    """The board runtime: tflite-runtime 2.14 (numpy < 2) in its own venv, if present."""
    python = os.environ.get("EDGEKT_TFLITE_RUNTIME_PYTHON", os.path.join(REPO_ROOT, ".venv-tflite-runtime", "bin",
                                                                         "python"))
    if not os.path.exists(python):
        pytest.skip(f"no tflite-runtime venv at {python} (.ci/run creates it)")
    model, tflite, path = exported["pruned_wrn"]
    x, y = _batch(7)
    np.savez(tmp_path / "batch.npz", x=x, y=y)
    script = (
        "import sys, numpy as np\n"
        "from tflite_runtime.interpreter import Interpreter\n"
        f"it = Interpreter(model_path={path!r})\n"
        "train = it.get_signature_runner('train')\n"
        f"d = np.load({str(tmp_path / 'batch.npz')!r})\n"
        f"losses = [float(train(x=d['x'], y=d['y'], w=np.ones({B}, np.float32), lr=np.full(1, 0.02, np.float32))['loss'])"
        " for _ in range(3)]\n"
        "print(' '.join(repr(v) for v in losses))\n")
    proc = subprocess.run([python, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    reference = DeviceTrainer(model, TrainerOptions(batch_size=B))
    expected = [float(reference.train(x, y, np.ones(B, np.float32), np.full(1, 0.02, np.float32))["loss"]) for _ in range(3)]
    np.testing.assert_allclose([float(v) for v in proc.stdout.split()], expected, rtol=1e-4)
