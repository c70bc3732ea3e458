"""One error hierarchy for every stage.

Each class carries its own exit code; ``cli.py`` turns any of them into a one-line message and that
code. The README's "errors and exit codes" table is generated from ``EXIT_CODES`` (a test checks it).
"""

from __future__ import annotations


class SqueezeEdgeError(Exception):
    """Base class: a problem the user can act on. Never shown with a traceback."""

    exit_code = 1
    kind = "error"


class InputError(SqueezeEdgeError):
    """A bad argument, file or directory given by the user."""

    exit_code = 3
    kind = "bad input"


class TargetError(SqueezeEdgeError):
    """An unknown or malformed target file, or a target TVM rejects."""

    exit_code = 4
    kind = "bad target"


class ArtifactError(SqueezeEdgeError):
    """An artifact directory that is missing, of another stage, tampered or from a future schema."""

    exit_code = 5
    kind = "bad artifact"


class ValidationError(SqueezeEdgeError):
    """A numerical check past its limit (export agreement, int8 fidelity)."""

    exit_code = 6
    kind = "validation failed"


class OutputError(SqueezeEdgeError):
    """The output location cannot be written, or another run holds its lock."""

    exit_code = 7
    kind = "cannot write output"


class CalibrationError(InputError):
    """Calibration data that cannot be used (empty, not UTF-8, missing column, too few texts)."""

    exit_code = 8
    kind = "bad calibration data"


class ToolchainError(SqueezeEdgeError):
    """A compiler, cross toolchain or emulator that is missing (names the package to install)."""

    exit_code = 9
    kind = "missing toolchain"


class CompileError(SqueezeEdgeError):
    """TVM could not import or compile the model (names the operator or pass)."""

    exit_code = 10
    kind = "compile failed"


class ExportError(SqueezeEdgeError):
    """PyTorch -> ONNX conversion failed (names the exporter's complaint)."""

    exit_code = 12
    kind = "export failed"


class RegressionError(SqueezeEdgeError):
    """A report's --fail-on check found a slower library than the previous run on the same device."""

    exit_code = 13
    kind = "regression"


class BoardLostError(SqueezeEdgeError):
    """Every board under the key left the tracker mid-run; what was measured is kept (rerun to resume)."""

    exit_code = 14
    kind = "board lost"


class PipelineError(SqueezeEdgeError):
    """A pipeline finished with one or more targets failed (each is named; the others' results are kept)."""

    exit_code = 15
    kind = "pipeline incomplete"


ALL_ERRORS = (
    SqueezeEdgeError,
    InputError,
    TargetError,
    ArtifactError,
    ValidationError,
    OutputError,
    CalibrationError,
    ToolchainError,
    CompileError,
    ExportError,
    RegressionError,
    BoardLostError,
    PipelineError,
)

# exit code -> (class name, meaning); 0 is success and 2 is Click's own usage error.
EXIT_CODES = {cls.exit_code: (cls.__name__, cls.kind) for cls in ALL_ERRORS}


def exit_code_table() -> str:
    """The Markdown table README.md carries (tests/test_errors.py checks they agree)."""
    rows = [(0, "-", "success"), (1, "internal error", "a bug of ours: one line, the traceback with -v"),
            (2, "click usage error", "unknown option, missing argument"),
            (130, "interrupted", "Ctrl-C; no partial artifact is left")]
    rows += [(c.exit_code, f"{c.__name__} ({c.kind})", (c.__doc__ or "").strip().splitlines()[0])
             for c in ALL_ERRORS if c is not SqueezeEdgeError]
    head = ["| exit code | error | meaning |", "| --- | --- | --- |"]
    return "\n".join(head + [f"| {code} | {name} | {doc} |" for code, name, doc in sorted(rows)])
