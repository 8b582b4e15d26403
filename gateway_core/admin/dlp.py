"""The ``dlp`` field of keys and organizations: their DLP override, kept in their ``metadata``.

The override is stored under ``metadata.dlp`` (where the auth plugin reads it into the principal) but
the API shows and takes it as a field of its own: answers lift it out of ``metadata``, and a
``metadata`` given in a body may not hold a ``dlp`` of its own (422). Each of the two fields left out
of an update keeps its stored value: replacing ``metadata`` keeps the override, and ``dlp: null``
removes only the override. An override is checked against the configuration before it is stored
(:func:`gateway_core.dlp.overrides.override_problem`).

Only admins set overrides: a key's override is applied last and may turn its organization's DLP off,
so the ``write`` role, enough to create keys, is not enough to change what leaves the company (403).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from gateway_core.admin import schemas
from gateway_core.admin.api import Call, forbidden, unprocessable
from gateway_core.dlp import overrides
from gateway_core.dlp.overrides import METADATA_KEY
from gateway_core.store.models import Role


def shown(metadata: Any) -> tuple[dict[str, Any], schemas.DlpOverride | None]:
    """The ``metadata`` to answer and the override lifted out of it.

    A ``metadata.dlp`` that is not a valid override (written before the field existed, or by hand)
    stays in the metadata shown, and the override is None.
    """
    shown_metadata = dict(metadata) if isinstance(metadata, dict) else {}
    raw = shown_metadata.get(METADATA_KEY)
    if not isinstance(raw, dict):
        return shown_metadata, None
    try:
        override = schemas.DlpOverride.model_validate(raw)
    except ValidationError:
        return shown_metadata, None
    del shown_metadata[METADATA_KEY]
    return shown_metadata, override


def stored_metadata(call: Call, body: BaseModel, current: Any = None) -> dict[str, Any]:
    """The ``metadata`` to store from a body's ``metadata`` and ``dlp`` and the ``current`` one."""
    given = body.model_fields_set
    metadata_given = "metadata" in given
    if metadata_given:
        metadata = dict(getattr(body, "metadata", None) or {})
        if METADATA_KEY in metadata:
            raise unprocessable(
                "metadata.dlp: set the DLP override with the `dlp` field, not in `metadata`.",
                param="metadata.dlp",
            )
    else:
        metadata = dict(current) if isinstance(current, dict) else {}
    if "dlp" in given:
        if call.user.role != Role.ADMIN:
            raise forbidden("Only admins may set or remove a DLP override.", param="dlp")
        metadata.pop(METADATA_KEY, None)
        override: schemas.DlpOverride | None = getattr(body, "dlp", None)
        if override is not None:
            problem = overrides.override_problem(override, call.gateway.config)
            if problem is not None:
                field, message = problem
                raise unprocessable(f"dlp.{field}: {message}", param=f"dlp.{field}")
            metadata[METADATA_KEY] = overrides.stored(override)
    elif metadata_given and shown(current)[1] is not None:
        metadata[METADATA_KEY] = current[METADATA_KEY]  # a new metadata keeps the stored override
    return metadata
