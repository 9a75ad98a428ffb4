"""What every pipeline binary shares: the error convention (`run`), flag checks, preset
overrides, config log."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import math
import os
import re
import sys
from typing import Callable, Mapping, Sequence

from absl import app, flags, logging

from edgekt import lock
from edgekt.atomic import forget_inputs, input_at, protect_inputs, refuse_input
from edgekt.errors import EXIT_INTERRUPTED, INTERRUPTED, UserError, fail, from_os_error


def run(main: Callable[[Sequence[str]], None], outputs: Sequence[str] = ()) -> None:
    """`app.run(main)` under the error convention: a bad flag, file or data prints one line
    `error: <what>: <why>; <what to do>` and exits with code 2, before any data is loaded
    where the flags alone show it; only bugs show a traceback.

    Args:
      main: the binary's main.
      outputs: the files the binary writes in its --out_dir, relative to it (an input
        there under one of these names is refused at once; every other write refuses inputs
        as it comes).
    """
    app.run(guarded(main), flags_parser=lambda argv: parse_flags(argv, outputs))


_HELP = {"--help": False, "-h": False, "-?": False, "--helpshort": False, "--helpfull": True}


def parse_flags(argv: Sequence[str], outputs: Sequence[str] = ()) -> list[str]:
    """Parses the command line into FLAGS; a flag error exits 2 with one line; a request for
    help prints it and exits 0. `outputs`: see `run`."""
    forget_inputs()
    asked = [_HELP[a] for a in argv[1:] if a in _HELP]
    if asked:
        app.usage(shorthelp=not any(asked), writeto_stdout=True, exitcode=0)
    try:
        rest = flags.FLAGS(argv)
    except flags.Error as e:
        sys.exit(fail(_flag_error_text(e)))
    try:
        reject_extra_args(rest)
        _check_finite_floats()
        _check_empty_values()
        _check_output_folder()
        _check_outputs_are_not_inputs(outputs)
    except UserError as e:
        sys.exit(fail(e))
    return rest


def _check_output_folder() -> None:
    if "out_dir" in flags.FLAGS and flags.FLAGS.out_dir:
        path = flags.FLAGS.out_dir
        if os.path.exists(path) and not os.path.isdir(path):
            raise UserError(f"--out_dir={path}: a file is there, not a folder; pass the path of a folder (it is "
                            "created if missing)")
        # Not created here (a refused run leaves nothing behind): the nearest folder that exists
        # must let this user create files, so that an unusable place fails before any work.
        existing = os.path.abspath(path)
        while not os.path.exists(existing):
            existing = os.path.dirname(existing)
        if not os.path.isdir(existing):
            raise UserError(f"--out_dir={path}: {existing} is a file, not a folder; pass a folder in a writable place")
        _check_path_length("--out_dir", path, existing)
        probe_writable("--out_dir", path, existing)


def _check_path_length(flag: str, path: str, existing: str) -> None:
    """A path the file system cannot hold (a name or the whole path too long) is refused by its
    flag before any work (the folder does not exist yet, so the probe alone would not show it)."""
    try:
        name_max, path_max = os.pathconf(existing, "PC_NAME_MAX"), os.pathconf(existing, "PC_PATH_MAX")
    except (OSError, ValueError):
        name_max, path_max = 255, 4096
    longest = max((os.fsencode(part) for part in os.path.abspath(path).split(os.sep)), key=len)
    if len(longest) > name_max:
        raise UserError(f"{flag}={path[:80]}...: a folder name of {len(longest)} bytes, more than the {name_max} the "
                        "file system allows; use a shorter path")
    # Room for the names of the files written inside it.
    if len(os.fsencode(os.path.abspath(path))) + name_max + 1 > path_max:
        raise UserError(f"{flag}={path[:80]}...: {len(os.fsencode(os.path.abspath(path)))} bytes long, too long for "
                        f"files inside it (the file system allows paths of {path_max} bytes); use a shorter path")


_OUTPUT_FLAGS = ("out_dir", "out")


def _input_files() -> list[tuple[str, str]]:
    """(what, path) of every input flag naming a file or folder that exists, with a .keras
    model's metrics.json beside it (its training record, read by later stages)."""
    found = []
    for name in flags.FLAGS:
        flag = flags.FLAGS[name]
        if name in _OUTPUT_FLAGS or not flag.present or not isinstance(flag.value, str) or not flag.value.strip():
            continue
        path = flag.value
        if not os.path.exists(path):
            continue
        found.append((f"--{name}={path}", path))
        if path.lower().endswith(".keras") and os.path.isfile(path):
            # Beside the path given and, for a link, beside the file it names.
            for folder in dict.fromkeys((os.path.dirname(os.path.abspath(path)),
                                         os.path.dirname(os.path.realpath(path)))):
                sidecar = os.path.join(folder, "metrics.json")
                if os.path.isfile(sidecar):
                    found.append((f"the metrics.json of --{name}={path}", sidecar))
    return found


def _check_outputs_are_not_inputs(outputs: Sequence[str]) -> None:
    """No output may replace an input. Every input file is registered (`protect_inputs`: by
    identity, so links and other spellings of a path count), and every write refuses one; what
    the flags show already is refused now: an --out that is an input, and an --out_dir holding
    an input under a name this binary writes there (`outputs`)."""
    protect_inputs(_input_files())
    if "out" in flags.FLAGS and flags.FLAGS.out:
        refuse_input(flags.FLAGS.out, "--out")
    if "out_dir" in flags.FLAGS and flags.FLAGS.out_dir and outputs:
        out_dir = flags.FLAGS.out_dir
        # As the folder will be created and written: "x/new/.." is x.
        folder = os.path.realpath(os.path.normpath(os.path.abspath(out_dir)))
        for name in outputs:
            what = input_at(os.path.join(folder, name))
            if what is not None:
                raise UserError(f"--out_dir={out_dir}: this binary writes {name} there, which is {what}; pass "
                                "another folder")


def probe_writable(flag: str, value: str, folder: str) -> None:
    """Creates and removes a file in `folder`, so that a place this user cannot write (a read-only
    or special file system, no permission) is refused by its flag before any work.

    Raises:
      UserError: names `--flag=value` and why the file could not be created.
    """
    import tempfile

    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".edgekt-probe-")
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        why = (e.strerror or str(e)).lower()
        raise UserError(f"{flag}={value}: files cannot be created in {folder} ({why}); pass a path in a writable "
                        "place") from None


def _check_empty_values() -> None:
    for name in flags.FLAGS:
        flag = flags.FLAGS[name]
        if flag.present and isinstance(flag.value, str) and not flag.value.strip():
            raise UserError(f"--{name}=: empty value; pass a value, or leave the flag out")


def _flag_error_text(error: flags.Error) -> str:
    text = " ".join(str(error).split())
    if isinstance(error, flags.UnrecognizedFlagError):
        return f"--{error.flagname}: unknown flag; see --helpshort for this binary's flags"
    if text.startswith("flag --") and ": " in text:
        what, why = text[len("flag "):].split(": ", 1)
        name = what.split("=", 1)[0]
        value = what[len(name) + 1:]
        if value.startswith("[") and value.endswith("]"):  # a list flag: shown as typed, comma-separated
            import ast

            try:
                what = f"{name}={','.join(map(str, ast.literal_eval(value)))}"
            except (ValueError, SyntaxError):
                pass
        if "must have a value other than None" in why:
            return f"{name}: required flag is missing; pass {name}=..."
        if "; " in why:  # the check already says what to do
            return f"{what}: {why.rstrip('.')}"
        return f"{what}: {why.rstrip('.')}; see --helpshort for what {name} accepts"
    if text.startswith("Missing value for flag "):
        name = text.rsplit(" ", 1)[-1]
        return f"{name}: no value given; pass {name}=VALUE"
    return f"command line: {text}; see --helpshort"


def _check_finite_floats() -> None:
    for name in flags.FLAGS:
        flag = flags.FLAGS[name]
        values = flag.value if isinstance(flag.value, list) else [flag.value]
        if flag.present and any(isinstance(v, float) and not math.isfinite(v) for v in values):
            raise UserError(f"--{name}={flag.value}: must be a finite number; pass a number")


def guarded(main):
    """`main` with user errors (and OSErrors about files or the disk) turned into one line and
    exit code 2."""
    def wrapped(argv):
        new_folder = _new_output_folder()
        try:
            with output_locks():
                main(argv)
        except (UserError, app.UsageError) as e:
            remove_empty_tree(new_folder)
            sys.exit(fail(e))
        except KeyboardInterrupt:
            remove_empty_tree(new_folder)
            fail(INTERRUPTED)
            sys.exit(EXIT_INTERRUPTED)
        except Exception as e:  # noqa: BLE001 (only a full disk or a denied path is turned into one line)
            error = environment_error(e)
            if error is None:
                raise
            remove_empty_tree(new_folder)
            sys.exit(fail(error))
    return wrapped


def _new_output_folder() -> str | None:
    """The outermost folder of --out_dir that does not exist yet (None if it exists)."""
    if "out_dir" not in flags.FLAGS or not isinstance(flags.FLAGS.out_dir, str) or not flags.FLAGS.out_dir:
        return None
    path = os.path.abspath(flags.FLAGS.out_dir)
    if os.path.exists(path):
        return None
    while not os.path.exists(os.path.dirname(path)):
        path = os.path.dirname(path)
    return path


def remove_empty_tree(folder: str | None) -> None:
    """Removes `folder` if it holds nothing but empty folders (a refused run created it and
    wrote nothing); a folder holding any file is left as it is."""
    if not folder or not os.path.isdir(folder) or os.path.islink(folder):
        return
    for dirpath, dirnames, filenames in os.walk(folder):
        if filenames or any(os.path.islink(os.path.join(dirpath, d)) for d in dirnames):
            return
    for dirpath, _, _ in sorted(os.walk(folder), key=lambda entry: -len(entry[0])):
        with contextlib.suppress(OSError):
            os.rmdir(dirpath)


@contextlib.contextmanager
def output_locks():
    """Holds an exclusive lock on the binary's --out_dir and --out for the run (one writer per
    output): a second run into the same place is refused at once, naming the first. Shards of
    one experiment (--shard=K/N) each lock their own part of the folder."""
    with contextlib.ExitStack() as stack:
        values = {name: flags.FLAGS[name].value for name in _OUTPUT_FLAGS
                  if name in flags.FLAGS and isinstance(flags.FLAGS[name].value, str) and flags.FLAGS[name].value}
        for name, path in values.items():
            target = path
            if name == "out_dir" and "shard" in flags.FLAGS and flags.FLAGS.shard:
                shard = parse_shard(flags.FLAGS.shard)
                target = os.path.abspath(path).rstrip(os.sep) + f".shard-{shard[0]}-of-{shard[1]}"
            stack.enter_context(lock.exclusive(target, f"--{name}={path}",
                                               f"wait for it to end, or pass another --{name}"))
        yield


# What TensorFlow's file errors say when the disk or the file system refuses a write.
_TF_FILE_PROBLEMS = {
    "No space left on device": errno.ENOSPC,
    "File too large": errno.EFBIG,
    "Disk quota exceeded": errno.EDQUOT,
    "Read-only file system": errno.EROFS,
    "Permission denied": errno.EACCES,
}


def environment_error(error: BaseException) -> UserError | None:
    """A user error for a full disk, a file-size limit or a denied path, whether Python
    (OSError) or TensorFlow (an op error whose message says so) reports it; None otherwise."""
    if isinstance(error, OSError):
        return from_os_error(error)
    tf = sys.modules.get("tensorflow")
    if tf is None or not isinstance(error, tf.errors.OpError):
        return None
    text = " ".join(str(error.message).split())
    for phrase, code in _TF_FILE_PROBLEMS.items():
        if phrase in text:
            path = re.search(r"(/[^\s;:,]+)", text)
            return from_os_error(OSError(code, phrase, path.group(1) if path else None))
    return None


def _shown(flag: str) -> str:
    value = flags.FLAGS[flag].value
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def check(condition: bool, flag: str, expected: str) -> None:
    """Raises a UserError naming `--flag=value` when `condition` is false (`expected` says what
    the flag must be, e.g. ">= 1")."""
    if not condition:
        from edgekt.presets import advice

        raise UserError(f"--{flag}={_shown(flag)}: must be {expected}; {advice(expected)}")


def config_from_flags(make: Callable[..., object], flag_to_field: Mapping[str, str], *args, **overrides):
    """`make(*args, **fields set by flags, **overrides)` (overrides win), with a field out of range
    reported under the flag that set it (`--lr=-0.1: must be > 0; ...`)."""
    from edgekt.presets import ConfigError

    fields = overrides_from_flags(flag_to_field)
    try:
        return make(*args, **{**fields, **overrides})
    except ConfigError as e:
        flag = next((f for f, field in flag_to_field.items() if field == e.field and flags.FLAGS[f].present), None)
        if flag is None:
            raise
        raise UserError(f"--{flag}={_shown(flag)}: must be {e.expected}; {e.todo}") from e


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """`--shard=K/N` -> (K, N) with 0 <= K < N; None stays None.

    Raises:
      UserError: not of that form.
    """
    if text is None:
        return None
    parts = text.split("/")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts) or not 0 <= int(parts[0]) < int(parts[1]):
        raise UserError(f"--shard={text}: must be K/N with 0 <= K < N (e.g. 0/2 and 1/2 for two processes); pass "
                        "it in that form")
    return int(parts[0]), int(parts[1])


def define_resize() -> flags.FlagHolder:
    """The --resize flag of a binary that reads images."""
    return flags.DEFINE_bool("resize", False, "Resize images of another size (bilinear) to the model's input size "
                             "(without a model: to the first image's size) instead of refusing them.")


def load_data(source: str, input_shape=None):
    """The --data source as loaded splits, under the binary's --resize flag: checked against
    (and with --resize, resized to) a model's input shape (H, W, C) when one is given."""
    from edgekt import data

    resize = bool(flags.FLAGS["resize"].value) if "resize" in flags.FLAGS else False
    if input_shape is None:
        return data.load(source, resize=resize)
    return data.load_for(source, tuple(input_shape), resize=resize)


def reject_extra_args(argv: Sequence[str]) -> None:
    """Raises a user error for positional arguments (usually a mistyped flag)."""
    if len(argv) > 1:
        raise UserError(f"{' '.join(argv[1:])}: unexpected arguments (flags are --name=value); "
                        "check the command line for a missing '--' or '='")


def overrides_from_flags(flag_to_field: dict[str, str]) -> dict:
    """Config fields for the flags the user actually set on the command line.

    Args:
      flag_to_field: flag name -> config field name.
    """
    out = {}
    for flag_name, field in flag_to_field.items():
        if flags.FLAGS[flag_name].present:
            out[field] = flags.FLAGS[flag_name].value
    return out


def log_config(stage: str, config, **extra) -> None:
    """Logs the resolved configuration as one JSON line."""
    body = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    logging.info("%s config: %s", stage, json.dumps({**body, **extra}, default=str, sort_keys=True))


def load_teacher_and_split(path: str, val_size: int | None) -> tuple[object, int, int, int]:
    """Loads the cloud model at `path` and the hold-outs the cloud stage used (`val_size`,
    seed and device pool from the metrics.json beside it), so later stages never validate on
    images the teacher trained on, nor train on the device pool.

    Args:
      path: the teacher's `.keras` file.
      val_size: the --val_size flag (None: the teacher's).

    Returns:
      (teacher, val_size, split_seed, device_pool_size).
    """
    from edgekt.prune.pruner import load_teacher

    if val_size is not None and val_size < 0:
        raise UserError(f"--val_size={val_size}: must be >= 0; leave it unset to use the teacher's")
    teacher, info = load_teacher(path)
    shape = tuple(teacher.input_shape) if not isinstance(teacher.input_shape, list) else None
    if shape is None or len(shape) != 4:
        raise UserError(f"--teacher={path}: takes inputs of shape {teacher.input_shape}, not images [N, H, W, C]; "
                        "pass an image classifier")
    teacher_config = info.get("config", {})
    if val_size is None:
        val_size = teacher_config.get("val_size", 5000)
    elif "val_size" in teacher_config and val_size != teacher_config["val_size"]:
        raise UserError(f"--val_size={val_size}: the teacher {path} held out {teacher_config['val_size']} "
                        "validation images, and another size would mix images it trained on into validation or "
                        "the device pool; leave --val_size unset")
    split_seed = teacher_config.get("seed", 0)
    if not info:
        logging.warning("no metrics.json beside %s: using val_size=%d, seed=%d; the validation images may overlap "
                        "the teacher's training images", path, val_size, split_seed)
    return teacher, val_size, split_seed, int((info.get("device_pool") or {}).get("size", 0))
