"""The test run itself: CI's reproducible Hypothesis profile, and PostgreSQL and Redis variants that are
skipped loudly without their variables and fail without their servers (``pytest`` in a fresh process)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import settings

from tests import hypothesis_profiles
from tests.services import POSTGRES_ENV, REDIS_ENV

ROOT = Path(__file__).resolve().parent.parent
#: Variables of the calling run that would change what the inner one does.
INHERITED = (POSTGRES_ENV, REDIS_ENV, "CI", "HYPOTHESIS_PROFILE", "PYTEST_ADDOPTS")
#: The PostgreSQL variant of an admin test, and a Redis test.
SERVICE_TESTS = (
    "tests/admin/test_auth.py::test_login_answers_a_token_pair_with_the_documented_claims[postgres]",
    "tests/gateway_core/store/test_events.py::test_a_channel_subscribed_after_start_receives",
)
SUMMARY = "PostgreSQL and Redis variants skipped"


@pytest.mark.parametrize(
    ("environ", "profile"),
    [
        ({}, "default"),
        ({"CI": "true"}, "ci"),
        ({"CI": "1"}, "ci"),
        ({"CI": "false"}, "default"),
        ({"HYPOTHESIS_PROFILE": "ci"}, "ci"),
        ({"CI": "true", "HYPOTHESIS_PROFILE": "default"}, "default"),
    ],
)
def test_the_profile_follows_the_environment(environ: dict[str, str], profile: str) -> None:
    assert hypothesis_profiles.selected(environ) == profile


def test_ci_runs_hypothesis_on_a_fixed_seed_without_an_example_database() -> None:
    assert settings.get_current_profile_name() == hypothesis_profiles.selected(os.environ)
    ci = settings.get_profile("ci")
    assert (ci.derandomize, ci.database, ci.deadline, ci.print_blob) == (True, None, None, True)


def pytest_run(**environ: str) -> subprocess.CompletedProcess[str]:
    env = {name: value for name, value in os.environ.items() if name not in INHERITED}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rN", *SERVICE_TESTS],
        cwd=ROOT,
        env={**env, **environ},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_without_the_variables_the_skipped_variants_are_counted_at_the_end() -> None:
    run = pytest_run()
    assert run.returncode == 0, run.stdout + run.stderr
    summary = run.stdout[run.stdout.index(SUMMARY) :]
    assert f"1 skipped because {POSTGRES_ENV} is not set: export {POSTGRES_ENV}=postgres://" in summary
    assert f"1 skipped because {REDIS_ENV} is not set: export {REDIS_ENV}=redis://" in summary
    assert re.search(r"^2 skipped in ", summary, re.MULTILINE), summary


def test_with_the_variables_an_unreachable_server_fails_instead_of_skipping() -> None:
    with socket.socket() as refusing:  # bound, never listening
        refusing.bind(("127.0.0.1", 0))
        port = refusing.getsockname()[1]
        run = pytest_run(
            **{
                POSTGRES_ENV: f"postgres://postgres@127.0.0.1:{port}/test",
                REDIS_ENV: f"redis://127.0.0.1:{port}/0",
            }
        )
    assert run.returncode == 1, run.stdout + run.stderr
    assert SUMMARY not in run.stdout
    assert re.search(r"^(1 failed, 1 error|2 errors|2 failed) in ", run.stdout, re.MULTILINE), run.stdout
