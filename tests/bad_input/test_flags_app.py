"""Bad flags of the device app: one line naming the flag and its value, exit 2, refused
before any data is read (the data paths here do not even exist), nothing saved changed."""

from __future__ import annotations

import os

import pytest

from harness import (app_json, assert_user_error, device_model_path, real_images, run_app, run_app_process, snapshot,
                     write_npz)

MISSING = "no_such_data.npz"  # a flag error must come before this is read


def _cases():
    learn = ["learn", "--model={model}", f"--data={MISSING}", "--checkpoint={tmp}/ck.npz"]
    unseen = ["learn-unseen", "--model={model}", f"--soft_labels={MISSING}", "--checkpoint={tmp}/ck.npz"]
    evaluate = ["evaluate", "--model={model}", f"--data={MISSING}"]
    predict = ["predict", "--model={model}", f"--images={MISSING}"]
    return [
        # (id, argv, names the error line must contain)
        ("lr negative", learn + ["--lr=-0.1"], ["--lr=-0.1", "[1e-08, 10]"]),
        ("lr zero", learn + ["--lr=0"], ["--lr=0"]),
        ("lr nan", learn + ["--lr=nan"], ["--lr=nan"]),
        ("lr inf", learn + ["--lr=inf"], ["--lr=inf"]),
        ("lr text", learn + ["--lr=fast"], ["--lr=fast", "not a number"]),
        ("epochs zero", learn + ["--epochs=0"], ["--epochs=0", ">= 1"]),
        ("epochs negative", learn + ["--epochs=-3"], ["--epochs=-3"]),
        ("epochs fraction", learn + ["--epochs=2.5"], ["--epochs=2.5", "not an integer"]),
        ("patience zero", learn + ["--patience=0"], ["--patience=0"]),
        ("min_delta negative", learn + ["--min_delta=-0.1"], ["--min_delta=-0.1"]),
        ("min_delta nan", learn + ["--min_delta=nan"], ["--min_delta=nan"]),
        ("val_fraction zero", learn + ["--val_fraction=0"], ["--val_fraction=0"]),
        ("val_fraction one", learn + ["--val_fraction=1"], ["--val_fraction=1"]),
        ("val_fraction above one", learn + ["--val_fraction=1.5"], ["--val_fraction=1.5"]),
        ("val_data is the training data", ["learn", "--model={model}", "--data={tmp}/d.npz", "--val_data={tmp}/./d.npz",
                                           "--checkpoint={tmp}/ck.npz"], ["--val_data={tmp}/./d.npz", "training data"]),
        ("replay_ratio one", learn + ["--replay=r.npz", "--replay_ratio=1"], ["--replay_ratio=1"]),
        ("replay_ratio negative", learn + ["--replay=r.npz", "--replay_ratio=-0.2"], ["--replay_ratio=-0.2"]),
        ("checkpoint_every zero", learn + ["--checkpoint_every=0"], ["--checkpoint_every=0"]),
        ("threads zero", learn + ["--threads=0"], ["--threads=0"]),
        ("threads text", evaluate + ["--threads=many"], ["--threads=many"]),
        ("seed negative", learn + ["--seed=-1"], ["--seed=-1"]),
        ("augment unknown", learn + ["--augment=rotate"], ["--augment=rotate", "flip_crop"]),
        ("head_init unknown", learn + ["--head_init=random"], ["--head_init=random", "imprint"]),
        ("temperature negative", unseen + ["--temperature=-4"], ["--temperature=-4", "[0.001, 1000]"]),
        ("temperature zero", unseen + ["--temperature=0"], ["--temperature=0", "[0.001, 1000]"]),
        ("temperature nan", unseen + ["--temperature=nan"], ["--temperature=nan"]),
        ("temperature inf", unseen + ["--temperature=inf"], ["--temperature=inf"]),
        ("top_k zero", predict + ["--top_k=0"], ["--top_k=0"]),
        ("unknown flag", learn + ["--learning_rate=0.1"], ["--learning_rate=0.1", "unknown flag"]),
        ("stray argument", evaluate + ["stray"], ["stray"]),
        ("missing value", evaluate + ["--split"], ["--split", "no value"]),
        ("missing required flag", ["learn", "--model={model}", f"--data={MISSING}"], ["--checkpoint", "required"]),
        ("missing model", ["info"], ["--model", "required"]),
        ("unknown command", ["train", "--model={model}"], ["train", "not a command"]),
        ("no command", [], ["command", "learn"]),
        ("temperature on learn", learn + ["--temperature=2"], ["--temperature=2"]),
        # Combinations that make no sense.
        ("val_fraction with val_data", learn + ["--val_data=v.npz", "--val_fraction=0.2"],
         ["--val_fraction=0.2", "--val_data"]),
        ("replay_ratio without replay", learn + ["--replay_ratio=0.5"], ["--replay_ratio=0.5", "--replay"]),
        ("split of an npz", learn + ["--split=train"], ["--split=train", ".npz"]),
        ("checkpoint is the data", ["learn", "--model={model}", "--data={tmp}/data.npz",
                                    "--checkpoint={tmp}/data.npz"], ["--checkpoint=", "--data"]),
        ("checkpoint is the model", ["learn", "--model={model}", f"--data={MISSING}", "--checkpoint={model}"],
         ["--checkpoint=", "--model"]),
        ("checkpoint is the model's metadata", ["learn", "--model={model}", f"--data={MISSING}",
                                                "--checkpoint={mdir}/model_meta.json", "--restart"],
         ["--checkpoint={mdir}/model_meta.json", "model_meta.json beside --model"]),
        ("checkpoint is a file under the data folder", ["learn", "--model={model}", "--data={tmp}",
                                                        "--checkpoint={tmp}/data.npz", "--restart"],
         ["--checkpoint={tmp}/data.npz", "under --data={tmp}"]),
        ("checkpoint is a folder", ["learn", "--model={model}", f"--data={MISSING}", "--checkpoint={tmp}"],
         ["--checkpoint=", "is a folder"]),
        ("checkpoint under a file", ["learn", "--model={model}", f"--data={MISSING}",
                                     "--checkpoint={tmp}/data.npz/run/ck.npz"], ["--checkpoint=", "is a file"]),
        ("init missing", learn + ["--init={tmp}/mistyped.npz"], ["--init=", "mistyped.npz", "no such checkpoint"]),
        ("evaluate checkpoint missing", evaluate + ["--checkpoint={tmp}/mistyped.npz"],
         ["--checkpoint=", "mistyped.npz", "no such checkpoint"]),
        ("predict checkpoint missing", predict + ["--checkpoint={tmp}/mistyped.npz"],
         ["--checkpoint=", "mistyped.npz"]),
        ("groups syntax", evaluate + ["--groups=pets"], ["--groups=pets", "name=class"]),
        ("val_groups syntax", learn + ["--val_groups=animals;vehicles=car"], ["--val_groups=", "name=class"]),
        ("groups class twice", evaluate + ["--groups=pets=cat,cat"], ["--groups=pets=cat,cat", "'pets'", "cat"]),
        ("data empty", ["evaluate", "--model={model}", "--data="], ["--data=", "empty value"]),
        ("model empty", ["info", "--model="], ["--model=", "empty value"]),
        ("checkpoint empty", ["learn", "--model={model}", f"--data={MISSING}", "--checkpoint="],
         ["--checkpoint=", "empty value"]),
        ("checkpoint folder missing", ["learn", "--model={model}", f"--data={MISSING}",
                                       "--checkpoint={tmp}/nowhere/ck.npz"], ["--checkpoint=", "does not exist"]),
        ("checkpoint not writable there", ["learn", "--model={model}", f"--data={MISSING}",
                                           "--checkpoint=/proc/ck.npz"], ["--checkpoint=/proc/ck.npz", "cannot be written"]),
        ("checkpoint name too long", ["learn", "--model={model}", f"--data={MISSING}",
                                      "--checkpoint={tmp}/" + "c" * 256 + ".npz"], ["--checkpoint=", "shorter file name"]),
    ]


CASES = _cases()


@pytest.mark.parametrize("argv,names", [(a, n) for _, a, n in CASES], ids=[c[0] for c in CASES])
def test_bad_flag_is_one_line_before_any_data_is_read(device_export, tmp_path, argv, names):
    model = device_model_path(device_export)
    (tmp_path / "data.npz").write_bytes(b"a user's file")
    (tmp_path / "ck.npz").write_bytes(b"an earlier checkpoint")
    before = snapshot(device_export[0], tmp_path)
    values = {"model": model, "tmp": tmp_path, "mdir": os.path.dirname(model)}
    args = [a.format(**values) for a in argv]
    line = assert_user_error(run_app(*args), *[n.format(**values) for n in names])
    assert MISSING not in line.split(":")[0]  # the flag is blamed, not the data it never read
    assert snapshot(device_export[0], tmp_path) == before


def test_help_still_prints_usage_and_exits_0():
    result = run_app("learn", "--help")
    assert result.code == 0 and "--checkpoint" in result.stdout and not result.error_lines


def test_a_real_process_gets_one_line_and_exit_2(device_export, tmp_path):
    model = device_model_path(device_export)
    before = snapshot(device_export[0])
    result = run_app_process("learn-unseen", f"--model={model}", f"--soft_labels={MISSING}",
                             f"--checkpoint={tmp_path / 'ck.npz'}", "--temperature=-4")
    assert_user_error(result, "--temperature=-4")
    result = run_app_process("evaluate", f"--model={model}", "--data=x.npz", "--no_such_flag=1")
    assert_user_error(result, "--no_such_flag=1")
    assert snapshot(device_export[0]) == before and not os.listdir(tmp_path)


def test_valid_flags_still_run(device_export, cifar, tmp_path):
    """The checks refuse only what is wrong: the smallest valid values run."""
    images, labels = real_images(cifar, 10)
    data = write_npz(tmp_path / "data.npz", images=images, labels=labels)
    model = device_model_path(device_export)
    result = app_json(run_app("learn", f"--model={model}", f"--data={data}", f"--checkpoint={tmp_path / 'ck.npz'}",
                              "--epochs=1", "--patience=1", "--min_delta=0", "--val_fraction=0.2", "--threads=1",
                              "--checkpoint_every=1", "--seed=0", "--quiet"))
    assert result["train_images"] == 8 and result["val_images"] == 2 and result["epochs"] == 1
