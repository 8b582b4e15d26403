"""What every section model shares: unknown keys are errors."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """A configuration section: a typo in a key is an error, never silently ignored."""

    model_config = ConfigDict(extra="forbid")
