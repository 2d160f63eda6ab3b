"""Run the Hydra app and turn user errors into one line on stderr and exit code 2.

Hydra normally prints its own multi-line report; with HYDRA_FULL_ERROR=1 it re-raises instead,
which lets us format known user errors (bad override, unknown config, failed validation,
missing or unreadable checkpoint) as `modlab: error: ...`. Anything else is a bug and keeps its
traceback. MODLAB_DEBUG=1 shows tracebacks for user errors too.
"""

from __future__ import annotations

import errno
import os
import re
import sys

from modlab.cli.main import UserError, fail
from modlab.errors import ModlabError


def one_line(exc: BaseException) -> str:
    """The message of `exc` and of its causes, folded onto one line."""
    missing = re.search(r"Missing mandatory value: ([\w.]+)", str(exc))
    if missing:
        return f"{missing.group(1)} is required (add {missing.group(1)}=...)"
    parts: list[str] = []
    for _ in range(4):
        if exc is None:
            break
        text = " ".join(str(exc).split())
        # OmegaConf / Hydra append context that is long and rarely helps on one line
        for tail in (" full_key:", " Config search path:", " To append to your config"):
            text = text.split(tail)[0].strip()
        if text and "$VALUE" not in text and not any(text in part for part in parts):
            parts.append(text)
        exc = exc.__cause__ or exc.__context__
    return ": ".join(parts) if parts else "invalid input"


# a run directory or file that cannot be written: not a bug, the user's disk or path
OUTPUT_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.ENOTDIR)


def output_error(exc: BaseException) -> str | None:
    """The one-line message of an error writing outputs (permissions, a full disk, ...), else None."""
    if isinstance(exc, OSError) and exc.errno in OUTPUT_ERRNOS:
        return f"cannot write {exc.filename or 'the run directory'}: {exc.strerror}"
    return None


def user_error_types() -> tuple[type[BaseException], ...]:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    return (UserError, ModlabError, HydraException, OmegaConfBaseException)


def run_reporting_errors() -> None:
    debug = os.environ.get("MODLAB_DEBUG", "") not in ("", "0")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    from modlab.cli import app

    app.JOB_ERRORS.clear()  # the entry point may run more than once in a process (tests)
    ended = "the others finished"
    try:
        app.hydra_main()
    except user_error_types() as error:
        if debug:
            raise
        fail(one_line(error))
    except ValueError as error:  # after the user errors: some OmegaConf errors are ValueErrors
        # Optuna's sweeper, when every trial failed with a user error (each returned no value): the
        # jobs' errors are the news, reported below; a ValueError of anything else is a bug
        if debug or not app.JOB_ERRORS or "No trials are completed" not in str(error):
            raise
        ended = "no trial of the search completed"
    except OSError as error:
        if debug or output_error(error) is None:
            raise
        fail(output_error(error))
    except KeyboardInterrupt:
        sys.stderr.write("modlab: interrupted\n")
        raise SystemExit(130) from None
    if app.JOB_ERRORS:  # user errors inside jobs (see app.hydra_main)
        (label, first), *more = app.JOB_ERRORS
        if not label:  # a single run
            fail(one_line(first))
        jobs = "; ".join(f"{lab}: {one_line(e)}" for lab, e in app.JOB_ERRORS)
        fail(f"{len(app.JOB_ERRORS)} job(s) of the sweep failed (each has error.txt), {ended}: {jobs}")
