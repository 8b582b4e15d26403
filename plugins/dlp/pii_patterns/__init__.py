"""``pii_patterns``: personal data and secrets found by validated patterns, fast and with no model.

What it reports (Presidio's names where Presidio has the type):

* EMAIL_ADDRESS, IP_ADDRESS (IPv4 and IPv6): :mod:`.network`;
* PHONE_NUMBER (international, and national in the ``phone_regions``), US_SSN, CREDIT_CARD and
  IBAN_CODE, each checked (``phonenumbers``, the SSA's rules, Luhn and issuers, mod 97): :mod:`.numbers`;
* OPENAI_API_KEY, ANTHROPIC_API_KEY, GOOGLE_API_KEY, AWS_ACCESS_KEY, GITHUB_TOKEN, SLACK_TOKEN, JWT,
  PRIVATE_KEY and GENERIC_SECRET (a random-looking value assigned to ``password``, ``api_key``, ...):
  :mod:`.credentials`.

Each family first runs one cheap scan (a regular expression that rarely matches prose, or a look for
``@``) and validates only its candidates, so ordinary text costs little. A value is reported as one
type: a card number is not also a phone number, a vendor key is not also a generic secret. The
decisions that trade recall for precision are in each module's docstring; the measured precision,
recall and cost are in ``docs/dlp-accuracy.md`` (``make bench-dlp``).
"""

from __future__ import annotations

from collections.abc import Callable

import phonenumbers
from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway_core import DlpFilter, Finding, hookimpl
from plugins.dlp.pii_patterns import credentials, holdback, network, numbers
from plugins.dlp.pii_patterns.entities import (
    ALL_TYPES,
    DIGIT_TYPES,
    EMAIL_ADDRESS,
    GENERIC_SECRET,
    IP_ADDRESS,
    KEY_TYPES,
    PRIVATE_KEY,
)

NAME = "pii_patterns"


class PiiPatternsOptions(BaseModel):
    """Options under ``dlp.filters.pii_patterns``."""

    model_config = ConfigDict(extra="forbid")

    phone_regions: list[str] = Field(
        default_factory=lambda: ["US"],
        description="regions whose national formats are read as phone numbers (ISO 3166 codes); "
        "numbers written with + or 00 and a country code are found whatever the regions ([]: only those)",
    )
    key_min_entropy: float = Field(
        3.0, ge=0, le=8, description="bits per character the random part of a vendor key must reach"
    )
    secret_min_length: int = Field(8, ge=4, le=256, description="shortest value of a generic secret")
    secret_min_entropy: float = Field(
        2.5,
        ge=0,
        le=8,
        description="bits per character a generic secret must reach (scaled down under 16 characters)",
    )

    @field_validator("phone_regions")
    @classmethod
    def _known_regions(cls, regions: list[str]) -> list[str]:
        upper = [region.upper() for region in regions]
        unknown = sorted(set(upper) - phonenumbers.SUPPORTED_REGIONS)
        if unknown:
            raise ValueError(f"unknown phone regions: {', '.join(unknown)} (ISO 3166 codes such as US, GB)")
        return upper


class PiiPatterns(DlpFilter):
    """Finds every type of :data:`~plugins.dlp.pii_patterns.entities.ALL_TYPES` in the event loop
    (about 0.1 ms for 4 KB of prose): no thread, nothing to load."""

    name = NAME
    Options = PiiPatternsOptions
    entity_types = ALL_TYPES

    def __init__(self, options: BaseModel) -> None:
        super().__init__(options)
        assert isinstance(options, PiiPatternsOptions)
        self._regions = tuple(options.phone_regions)
        self._key_entropy = options.key_min_entropy
        self._secret_entropy = options.secret_min_entropy
        self._secret_length = options.secret_min_length
        self._assignment = credentials.compile_assignment(options.secret_min_length)

    def find(self, text: str, entity_types: frozenset[str]) -> list[Finding]:
        found: list[Finding] = []
        if entity_types & DIGIT_TYPES:
            found.extend(numbers.find_numbers(text, entity_types, self._regions))
        if EMAIL_ADDRESS in entity_types:
            found.extend(network.find_emails(text))
        if IP_ADDRESS in entity_types:
            found.extend(network.find_ipv6(text))
        if entity_types & KEY_TYPES:
            found.extend(credentials.find_keys(text, entity_types, self._key_entropy))
        if PRIVATE_KEY in entity_types:
            found.extend(credentials.find_private_keys(text))
        if GENERIC_SECRET in entity_types:
            typed = {(finding.start, finding.end) for finding in found}
            found.extend(
                finding
                for finding in credentials.find_assigned_secrets(
                    text, self._assignment, self._secret_length, self._secret_entropy
                )
                if (finding.start, finding.end) not in typed
            )
            found.extend(credentials.find_url_passwords(text, self._secret_length, self._secret_entropy))
        return found

    def holdback(self, text: str, entity_types: frozenset[str]) -> int:
        return holdback.holdback(text, entity_types)


@hookimpl
def lockgate_register_dlp_filters(register: Callable[[str, type[DlpFilter]], None]) -> None:
    register(NAME, PiiPatterns)
