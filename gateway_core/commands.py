"""Sub-commands that plugins add to the ``lockgate`` command line."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Command:
    """A ``lockgate NAME`` sub-command.

    ``run(args)`` returns the process exit code; ``add_arguments(parser)`` declares its options.
    """

    name: str
    help: str
    run: Callable[[argparse.Namespace], int]
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
