"""The Sacred side of the configuration: defaults, overrides, and the boundary to ``maskcl``.

The Sacred config of every experiment is ``maskcl.config.Config().to_dict()`` — the library's
documented defaults (one comment per key in ``maskcl/config.py``) — plus a small ``io`` group of
paths that belongs to the experiment, not to the method. Values are overridden the Sacred way::

    python -m experiments.train with params.yaml             # the pipeline's values (DVC stage)
    python -m experiments.train with params.yaml eps=0.55 train.epochs=2
    python -m experiments.train print_config with params.yaml

Sacred checks the keys (a misspelt key in params.yaml is a ``ConfigAddedError``) but not the
types (``dvc exp run -S eps=1`` writes an int), and hands the main function ``ReadOnlyDict`` s
that do not pickle into DataLoader workers (IDSIA/sacred#499/#770). So :func:`build_config`
converts to plain dicts and builds the typed, validated :class:`~maskcl.config.Config` — the only
config object the library ever sees.
"""

from __future__ import annotations

import copy
import logging
import signal
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sacred import SETTINGS, Experiment
from sacred.utils import SacredInterrupt, apply_backspaces_and_linefeeds

from maskcl.config import Config, read_yaml_mapping
from maskcl.errors import MaskclError, find_in_chain

# Capture print/logging through sys.stdout instead of tee-ing file descriptors 1/2 through
# subprocesses: DataLoader workers and faiss cannot flood the record, and it works under pytest.
SETTINGS.CAPTURE_MODE = "sys"

IO_KEY = "io"  # the experiment-only group; never passed to Config.from_dict


def default_config() -> dict[str, Any]:
    """The library defaults as a nested plain dict (the base of every experiment's config)."""
    return Config().to_dict()


def to_plain(value: Any) -> Any:
    """Sacred's ``ReadOnlyDict``/``ReadOnlyList`` (and tuples) → plain ``dict``/``list``, recursively."""
    if isinstance(value, Mapping):
        return {str(key): to_plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(item) for item in value]
    return copy.copy(value)


def build_config(sacred_config: Mapping[str, Any], source: str = "sacred config") -> tuple[Config, dict[str, Any]]:
    """(typed, validated Config, plain ``io`` group) from the config Sacred hands ``@ex.main``.

    Raises :class:`maskcl.errors.ConfigError` naming the key (ints for float keys are cast).
    """
    plain = to_plain(sacred_config)
    io = plain.pop(IO_KEY, {}) or {}
    return Config.from_dict(plain, source=source), io


def configure(ex: Experiment, io_defaults: Mapping[str, Any]) -> Experiment:
    """Give a Sacred Experiment the library defaults and this experiment's ``io`` paths.

    The Experiment itself is created in the experiment's own module (Sacred takes the calling
    file as the run's main source)::

        ex = configure(Experiment("maskcl_train", save_git_info=has_git_commit()), {...})

    Git info is saved only when HEAD has a commit (GitPython raises on an unborn branch,
    IDSIA/sacred#782); the run's ``info`` records commit and dirty flag either way.
    """
    config = default_config()
    config[IO_KEY] = dict(io_defaults)
    ex.add_config(config)
    ex.captured_out_filter = apply_backspaces_and_linefeeds  # tqdm's \r updates collapse to one line
    return ex


def has_git_commit() -> bool:
    import subprocess

    try:
        done = subprocess.run(
            ["git", "rev-parse", "--verify", "--quiet", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


class Terminated(SacredInterrupt):
    """SIGTERM (``kill``, a queue worker stopped): Sacred records the run as INTERRUPTED."""

    STATUS = "INTERRUPTED"


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated(f"signal {signum}")


def install_sigterm_handler() -> None:
    """Turn SIGTERM into an exception so Sacred marks the run INTERRUPTED instead of leaving it
    RUNNING (a ``kill -9`` cannot be caught: the next run records ``resumed_from_run``)."""
    signal.signal(signal.SIGTERM, _raise_terminated)


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is *now*, so Sacred's capture sees log records."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def setup_logging(level: int = logging.INFO) -> None:
    """Library log lines (epoch summaries …) on stderr and in the run's captured output."""
    handler = logging.StreamHandler(_CurrentStderr())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    for name in ("maskcl", "experiments"):
        logger = logging.getLogger(name)
        logger.setLevel(level)
        # once per process: a second call (several runs in one process) must not double the lines
        if not any(isinstance(h.stream, _CurrentStderr) for h in logger.handlers if isinstance(h, logging.StreamHandler)):
            logger.addHandler(handler)
        logger.propagate = False  # Sacred's own handler sits on the root logger: no double lines


def run_commandline(ex: Experiment, argv: Sequence[str] | None, runs_dir: str | Path | None = None) -> int:
    """``python -m experiments.<x> [with params.yaml key=value ...]`` with observers from the env.

    A :class:`~maskcl.errors.MaskclError` (a bad value, a broken params.yaml, a bad environment
    variable, a locked run folder …) prints ONE line ``experiments.<x>: error: …`` and returns its
    exit code, as ``maskcl`` does: this is what ``dvc repro`` and ``dvc exp run`` show, and Sacred
    would print its filtered traceback instead. Sacred still records the run as FAILED first.
    """
    from experiments.observers import is_rank_zero, observers_from_env

    setup_logging(logging.INFO if is_rank_zero() else logging.WARNING)  # torchrun: rank 0 speaks
    install_sigterm_handler()
    argv = list(sys.argv if argv is None else argv)
    program = _program(argv, ex)
    try:
        ex.observers[:] = observers_from_env(runs_dir)
        check_config_files(argv)
        with _maskcl_errors_raised():
            run = ex.run_commandline(argv)
    except MaskclError as exc:
        print(f"{program}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0 if run is not None and run.status == "COMPLETED" else 1


def _program(argv: Sequence[str], ex: Experiment) -> str:
    """``experiments.train`` for ``python -m experiments.train`` / ``experiments/train.py``."""
    first = Path(argv[0]) if argv else None
    if first is not None and first.suffix == ".py":
        return f"{first.parent.name}.{first.stem}" if first.parent.name else first.stem
    return ex.path


def check_config_files(argv: Sequence[str]) -> None:
    """Read every ``with <file>.yaml`` of ``argv`` with the project's reader first, so a broken
    params.yaml is one line naming the file, line and column (Sacred would raise deep inside)."""
    if "with" not in argv:
        return
    for word in argv[list(argv).index("with") + 1:]:
        if "=" not in word and Path(word).suffix.lower() in (".yaml", ".yml") and Path(word).exists():
            read_yaml_mapping(word)


def _first_maskcl_error(exc: BaseException | None) -> MaskclError | None:
    return find_in_chain(exc, MaskclError)


@contextmanager
def _maskcl_errors_raised() -> Iterator[None]:
    """While Sacred's command line runs, let a MaskclError leave it (to be printed on one line)
    instead of being printed as a filtered traceback: Sacred calls ``print_filtered_stacktrace``
    inside its ``except`` block, after the run's observers have recorded the failure."""
    import sacred.experiment

    original = sacred.experiment.print_filtered_stacktrace

    def raise_maskcl_error(*args: Any, **kwargs: Any) -> None:
        error = _first_maskcl_error(sys.exc_info()[1])
        if error is not None:
            raise error.with_traceback(None) from None
        original(*args, **kwargs)

    sacred.experiment.print_filtered_stacktrace = raise_maskcl_error
    try:
        yield
    finally:
        sacred.experiment.print_filtered_stacktrace = original
