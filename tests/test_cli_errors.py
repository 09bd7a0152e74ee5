"""Every user error of the real `genforge` CLI is one `error:` line and a non-zero exit, for every command:
usage errors exit 2 with typer's usage line, other user errors exit 1, Ctrl-C 130; tracebacks only with --debug."""
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import BIN


def _stderr_lines(proc) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.strip()]


def _assert_one_line_error(proc, code: int, *fragments: str) -> list[str]:
    lines = _stderr_lines(proc)
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert lines and lines[0].startswith("error: "), proc.stderr
    assert sum(line.startswith("error:") for line in lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines


@pytest.mark.parametrize("args, usage, fragments", [
    (["trian"], "Usage: genforge [OPTIONS] COMMAND [ARGS]...", ["No such command 'trian'"]),
    (["stage", "trian"], "Usage: genforge stage [OPTIONS] COMMAND [ARGS]...", ["Did you mean 'train'?"]),
    (["generate"], "Usage: genforge generate [OPTIONS] {MODEL}", ["Missing argument 'MODEL'"]),
    (["generate", "x", "-n", "abc", "--out", "o"], "Usage: genforge generate [OPTIONS] {MODEL}",
     ["Invalid value for '-n' / '--num'"]),
    (["generate", "x", "--out", "o"], "Usage: genforge generate [OPTIONS] {MODEL}", ["Missing option '-n'"]),
    (["run", "--samples", "abc"], "Usage: genforge run [OPTIONS]", ["Invalid value for '--samples'"]),
    (["run", "--nope"], "Usage: genforge run [OPTIONS]", ["No such option: --nope"]),
    (["stage", "train", "--family", "vea"], "Usage: genforge stage train [OPTIONS]",
     ["unknown model family 'vea'; did you mean 'vae'?"]),
    (["stage", "evaluate", "--family", "dcgn"], "Usage: genforge stage evaluate [OPTIONS]", ["did you mean 'dcgan'?"]),
    (["registry", "promote"], "Usage: genforge registry promote [OPTIONS] {NAME} {VERSION}", ["Missing argument 'NAME'"]),
    (["registry", "promote", "m", "1"], "Usage: genforge registry promote [OPTIONS] {NAME} {VERSION}",
     ["Missing option '--reason'"]),
    (["schedule"], "Usage: genforge schedule [OPTIONS]", ["Missing option '--cron'"]),
    (["server", "start", "--port", "abc"], "Usage: genforge server start [OPTIONS]", ["Invalid value for '--port'"]),
])
def test_usage_errors_exit_2_with_one_error_line_and_the_usage(cli, project, args, usage, fragments):
    """typer's usage line follows the error (required arguments in braces, as typer writes them)."""
    lines = _assert_one_line_error(cli(args, project, timeout=120), 2, *fragments)
    assert lines[1] == usage and lines[2].startswith("Try 'genforge")


@pytest.mark.parametrize("args, fragments", [
    (["registry", "show", "nope"], ["no registered model 'nope'"]),
    (["registry", "promote", "nope", "1", "--reason", "x"], ["nope"]),
    (["registry", "rollback", "nope", "--reason", "x"], ["nope"]),
    (["generate", "nope@champion", "-n", "2", "--out", "o"], ["nope"]),
    (["schedule", "--cron", "0 3 * * *"], ["PREFECT_API_URL is not set"]),
    (["stage", "train", "--family", "vae", "--set", "train.epochs=abc"], ["train.epochs: expected an integer >= 1, "
                                                                          "got 'abc'"]),
    (["stage", "prepare", "--set", "evaluation.num_sampels=50"], ["did you mean 'num_samples'?"]),
])
def test_other_user_errors_exit_1_with_one_error_line(cli, project, args, fragments):
    env_api = os.environ.pop("PREFECT_API_URL", None)
    try:
        _assert_one_line_error(cli(args, project, timeout=120), 1, *fragments)
    finally:
        if env_api is not None:
            os.environ["PREFECT_API_URL"] = env_api
    assert not (project / "outputs").exists() and not (project / "o").exists()


def test_help_still_exits_0(cli, project):
    for args in (["--help"], ["stage", "--help"], ["generate", "--help"], ["registry", "show", "--help"]):
        proc = cli(args, project, timeout=120)
        assert proc.returncode == 0 and "Usage: genforge" in proc.stdout, (args, proc.stderr)
    assert "MODEL" in cli(["generate", "--help"], project).stdout


def test_debug_shows_the_traceback(cli, project):
    proc = cli(["--debug", "trian"], project, timeout=120)
    assert proc.returncode == 2 and "Traceback" in proc.stderr and "error: No such command" in proc.stderr
    proc = cli(["--debug", "stage", "prepare", "--set", "train.epochs=0"], project, timeout=120)
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "error: train.epochs" in proc.stderr


def test_ctrl_c_exits_130_with_one_line(project, tmp_path):
    """A real SIGINT while a command runs (here `registry show`, made to wait in the test's own copy)."""
    ready = tmp_path / "ready"
    code = ("import sys, time, pathlib; import pipelines.registry as r, pipelines.cli as c\n"
            f"def slow(name):\n    pathlib.Path({str(ready)!r}).touch(); time.sleep(60)\n"
            "r.show = slow; sys.argv = ['genforge', 'registry', 'show', 'x']; c.main()\n")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=project, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == ["error: interrupted"], err


def test_prefect_run_logs_keep_a_user_errors_message_and_drop_its_traceback():
    """A user error raised inside a task (a setting the data cannot satisfy, found when the family's training
    starts) is logged by Prefect's run loggers as one line; --debug (show=True) keeps the traceback."""
    import io
    import logging

    from contracts.errors import ConfigError
    from pipelines.env import PREFECT_RUN_LOGGERS, user_error_tracebacks

    def logged(show: bool, exc: Exception) -> str:
        user_error_tracebacks(show=show)
        stream = io.StringIO()
        handler = logging.StreamHandler(stream)
        logger = logging.getLogger(PREFECT_RUN_LOGGERS[0])
        logger.addHandler(handler)
        try:
            try:
                raise exc
            except Exception as caught:
                logger.error("Task run failed with exception: %r - Retries are exhausted", caught, exc_info=True)
        finally:
            logger.removeHandler(handler)
        return stream.getvalue()

    user_error = ConfigError("model.cvae", "prior_components 500: class 0 has 144")
    try:
        quiet = logged(False, user_error)
        assert "Task run failed with exception: ConfigError" in quiet and "Traceback" not in quiet
        assert "Traceback" in logged(True, user_error)                       # --debug
        assert "Traceback" in logged(False, RuntimeError("a bug"))           # not a user error: kept
    finally:
        user_error_tracebacks(show=True)  # this process's loggers as they were (no filter)
