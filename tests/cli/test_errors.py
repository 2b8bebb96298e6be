"""One table (`ERROR_MAPPINGS`) turns every exception into one `error:` line and an exit code: 1 error, 2 usage
(click's), 3 missing optional dependency, 4 failed parity check, 130 interrupted; anything unexpected is one line with
a hint, and its traceback only with MOBILENET_ZOO_DEBUG=1."""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mobilenet_zoo.errors import (
    DEBUG_ENV,
    ERROR_MAPPINGS,
    ArchiveError,
    MissingDependencyError,
    ModelFormatError,
    OfflineError,
    UnknownVariantError,
    UsageError,
    VerificationError,
    ZooError,
    describe_error,
)
from mobilenet_zoo.zoo.samples import BUNDLED_MODEL

ROOT = Path(__file__).parents[2]
HINT = f"(set {DEBUG_ENV}=1 for the traceback)"


@pytest.mark.parametrize(
    ("error", "message", "code"),
    [
        (ZooError("bad input"), "bad input", 1),
        (ArchiveError("x.tgz: corrupt archive (gzip CRC)"), "x.tgz: corrupt archive (gzip CRC)", 1),
        (OfflineError("offline"), "offline", 1),
        (ModelFormatError("m.onnx: not a MobileNet V1 graph"), "m.onnx: not a MobileNet V1 graph", 1),
        (MissingDependencyError("ONNX is not installed"), "ONNX is not installed", 3),
        (VerificationError("1 of 1 targets failed parity"), "1 of 1 targets failed parity", 4),
        (UnknownVariantError("unknown variant 'x'"), "unknown variant 'x'", 2),
        (KeyboardInterrupt(), "interrupted", 130),
        (PermissionError(errno.EACCES, "Permission denied", "/out/m.onnx"), "/out/m.onnx: permission denied", 1),
        (OSError(errno.ENOSPC, "No space left on device", "/out/m.onnx"), "/out/m.onnx: no space left on device", 1),
        (RuntimeError("kaput\nmore detail"), f"unexpected RuntimeError: kaput {HINT}", 1),
    ],
)
def test_the_table_gives_one_line_and_the_exit_code_of_each_kind(error, message, code):
    line, exit_code = describe_error(error)
    assert (line, exit_code) == (message, code)
    assert "\n" not in line


def test_the_codes_are_distinct_and_a_mistyped_value_is_a_usage_error_like_clicks():
    codes = {mapping.type: mapping.exit_code for mapping in ERROR_MAPPINGS}
    assert codes[VerificationError] == 4 and codes[MissingDependencyError] == 3 and codes[ZooError] == 1
    assert [kind for kind, code in codes.items() if code == 2] == [UsageError]
    assert issubclass(UnknownVariantError, UsageError)


def run_python(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


# A real command whose body fails in a way no mapping knows.
FAILING_COMMAND = """
    from mobilenet_zoo.cli import app, main

    @app.command("divide")
    def divide(by: int) -> None:
        print(1 / by)

    main(["divide", "0"])
"""


def test_an_unexpected_error_is_one_line_with_a_hint():
    result = run_python(FAILING_COMMAND, env={DEBUG_ENV: ""})
    assert (result.returncode, result.stderr) == (1, f"error: unexpected ZeroDivisionError: division by zero {HINT}\n")


def test_debug_shows_the_traceback_then_the_line():
    result = run_python(FAILING_COMMAND, env={DEBUG_ENV: "1"})
    assert result.returncode == 1
    assert result.stderr.startswith("Traceback (most recent call last):") and ", in divide\n" in result.stderr
    assert result.stderr.splitlines()[-1] == "error: unexpected ZeroDivisionError: division by zero"


def test_a_usage_error_keeps_clicks_code_2():
    result = subprocess.run(
        [sys.executable, "-m", "mobilenet_zoo", "pull", "--no-such-option"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr == "error: No such option: --no-such-option (see `mobilenet-zoo pull --help`)\n"


def test_a_missing_optional_dependency_exits_3(tmp_path):
    result = run_python(f"""
        import sys
        sys.modules["matplotlib"] = None  # as if the [plot] extra were not installed
        from mobilenet_zoo.cli import main
        main(["plot", "-o", {str(tmp_path / "zoo.png")!r}])
    """)
    assert result.returncode == 3, result.stderr
    expected = r"error: matplotlib is not installed: pip install 'mobilenet-zoo\[plot\]' \(.+\)\n"
    assert re.fullmatch(expected, result.stderr), result.stderr
    assert not (tmp_path / "zoo.png").exists()


def test_a_file_system_error_is_one_line_naming_the_path(tmp_path):
    folder = tmp_path / "reference.npz"
    folder.mkdir()  # a folder where the file should go
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mobilenet_zoo",
            "verify",
            str(BUNDLED_MODEL),
            "--reference",
            str(BUNDLED_MODEL),
            "--random",
            "1",
            "--save-reference",
            str(folder),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert (result.returncode, result.stderr) == (1, f"error: {folder}: is a directory\n")
