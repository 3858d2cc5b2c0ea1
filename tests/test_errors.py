"""The cause-chain search behind every one-line error that names the original failure."""

from __future__ import annotations

import errno

from maskcl.errors import ConfigError, MaskclError, find_in_chain


def _raised(make) -> BaseException:
    try:
        make()
    except BaseException as exc:  # noqa: BLE001 - the test inspects what was raised
        return exc
    raise AssertionError("nothing was raised")


def test_finds_the_disk_error_a_library_wrapped_in_its_context() -> None:
    def save() -> None:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("PytorchStreamWriter failed writing file data/0")  # wraps it by context

    found = find_in_chain(_raised(save), OSError)
    assert isinstance(found, OSError) and found.errno == errno.ENOSPC


def test_finds_an_explicit_cause_and_the_exception_itself() -> None:
    bad_key = ConfigError("params.yaml: eps = -1; expected a number > 0")
    wrapped = _raised(lambda: _wrap(bad_key))
    assert find_in_chain(wrapped, MaskclError) is bad_key
    assert find_in_chain(bad_key, MaskclError) is bad_key


def _wrap(inner: BaseException) -> None:
    raise KeyError("config") from inner


def test_none_when_the_chain_has_no_such_error_even_if_it_loops() -> None:
    first, second = ValueError("a"), ValueError("b")
    first.__context__, second.__context__ = second, first  # a cycle must not hang the search
    assert find_in_chain(first, OSError) is None
    assert find_in_chain(None, OSError) is None
