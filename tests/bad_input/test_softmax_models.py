"""A cloud or user model whose last layer applies a softmax: soft labels (file and server),
distillation and evaluation use its logits, so it gives the same results as the same weights
with a linear output (not softmax applied twice: near-uniform soft labels)."""

from __future__ import annotations

import io
import json
import threading
import urllib.request

import keras
import numpy as np
import pytest

from harness import run_pipelines


def _variants():
    """The same weights ending in: a linear Dense, a Dense with softmax, a Softmax layer,
    an Activation("softmax"), and a Sequential whose Dense has softmax."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inp)
    x = keras.layers.Conv2D(8, 3, activation="relu", name="conv")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    logits = keras.layers.Dense(10, name="logits")(x)
    linear = keras.Model(inp, logits)
    # Large logits, so that a second softmax visibly flattens the soft labels.
    w, b = linear.get_layer("logits").get_weights()
    linear.get_layer("logits").set_weights([w * 40.0, b])
    dense = keras.Model(inp, keras.layers.Dense(10, activation="softmax", name="logits")(x))
    dense.set_weights(linear.get_weights())
    layer = keras.Model(inp, keras.layers.Softmax(name="probs")(logits))
    act = keras.Model(inp, keras.layers.Activation("softmax", name="probs")(logits))
    seq = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Rescaling(1 / 255.0),
                            keras.layers.Conv2D(8, 3, activation="relu"), keras.layers.GlobalAveragePooling2D(),
                            keras.layers.Dense(10, activation="softmax")])
    seq.set_weights(linear.get_weights())
    return {"linear": linear, "dense_softmax": dense, "softmax_layer": layer, "activation_softmax": act,
            "sequential_softmax": seq}


def test_logits_model_and_evaluation_of_softmax_models(cifar):
    from edgekt import evaluation
    from edgekt.models import saving

    images = cifar["test"].images[:16]
    models = _variants()
    want = evaluation.predict_logits(models["linear"], images)
    assert not saving.ends_in_softmax(models["linear"]) and saving.logits_model(models["linear"]) is models["linear"]
    for name, model in models.items():
        if name == "linear":
            continue
        assert saving.ends_in_softmax(model), name
        np.testing.assert_allclose(np.asarray(saving.logits_model(model)(images.astype(np.float32))), want, rtol=1e-5,
                                   atol=1e-4, err_msg=name)
        np.testing.assert_allclose(evaluation.predict_logits(model, images), want, rtol=1e-5, atol=1e-4, err_msg=name)
        # The model itself is unchanged: it still outputs probabilities.
        probs = np.asarray(model(images[:2].astype(np.float32)))
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_distillation_from_a_softmax_teacher_uses_its_logits(cifar):
    from edgekt.transfer.distiller import Distiller, TransferConfig

    models = _variants()
    x = cifar["test"].images[:8].astype(np.float32)
    y = cifar["test"].labels[:8]
    student = keras.models.clone_model(models["linear"])
    student.set_weights([v * 0.5 for v in models["linear"].get_weights()])
    losses = {}
    for name in ("linear", "dense_softmax", "softmax_layer"):
        d = Distiller(student, models[name], TransferConfig(ce_weight=0.0, kd_weight=1.0, temperature=4.0))
        losses[name] = float(d.compute_loss(x, y, d(x)))
    assert losses["dense_softmax"] == pytest.approx(losses["linear"], rel=1e-4)
    assert losses["softmax_layer"] == pytest.approx(losses["linear"], rel=1e-4)


def test_soft_labels_file_and_server_of_a_softmax_cloud_model(cifar, tmp_path):
    from edgekt.models import saving
    from edgekt.transfer import soft_labels

    models = _variants()
    images = cifar["test"].images[:12]
    np.savez(tmp_path / "images.npz", images=images)
    names = list(cifar.class_names)
    cases = []
    for name in ("linear", "dense_softmax", "softmax_layer"):
        folder = tmp_path / name
        folder.mkdir()
        saving.save_model(models[name], folder / "model.keras")
        (folder / "metrics.json").write_text(json.dumps({"class_names": names}))
        cases.append([f"--model={folder / 'model.keras'}", f"--images={tmp_path / 'images.npz'}",
                      f"--out={folder / 'soft.npz'}", "--temperature=4"])
    results = run_pipelines("pipelines.soft_labels", cases)
    assert all(r.code == 0 for r in results), [r.stderr[-500:] for r in results]
    soft = {name: np.load(tmp_path / name / "soft.npz")["soft_targets"]
            for name in ("linear", "dense_softmax", "softmax_layer")}
    assert soft["linear"].max(axis=1).mean() > 0.2  # far from uniform (0.1)
    for name in ("dense_softmax", "softmax_layer"):
        np.testing.assert_allclose(soft[name], soft["linear"], atol=1e-5, err_msg=name)

    # The server: the same soft labels.
    server = soft_labels.make_server(saving.load_model(tmp_path / "dense_softmax" / "model.keras"), names, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        body = io.BytesIO()
        np.savez(body, images=images)
        host, port = server.server_address[:2]
        request = urllib.request.Request(f"http://{host}:{port}/soft_labels?temperature=4", data=body.getvalue(),
                                         method="POST")
        with urllib.request.urlopen(request, timeout=60) as reply:
            served = np.load(io.BytesIO(reply.read()))["soft_targets"]
    finally:
        server.shutdown()
        server.server_close()
    np.testing.assert_allclose(served, soft["linear"], atol=1e-5)
