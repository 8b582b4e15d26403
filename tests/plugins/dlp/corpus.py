"""A labelled corpus for the ``pii_patterns`` filter: true values in sentences, and look-alikes.

Every value is synthetic: payment cards are the networks' published test numbers or numbers built to
pass Luhn, IBANs get computed check digits around made-up account numbers, phone numbers are in
fictional ranges (555-01xx, Ofcom's drama numbers) or made up, and keys and tokens are random strings
in their vendor's format from a seeded generator, so the corpus is the same on every run.

:data:`POSITIVES` hold one true value each, :data:`NEGATIVES` a value that must not be reported as
anything. The filter is measured with :data:`OPTIONS`.
"""

from __future__ import annotations

import base64
import json
import random
import string
from dataclasses import dataclass

from plugins.dlp.pii_patterns.entities import (
    ANTHROPIC_API_KEY,
    AWS_ACCESS_KEY,
    CREDIT_CARD,
    EMAIL_ADDRESS,
    GENERIC_SECRET,
    GITHUB_TOKEN,
    GOOGLE_API_KEY,
    IBAN_CODE,
    IP_ADDRESS,
    JWT,
    OPENAI_API_KEY,
    PHONE_NUMBER,
    PRIVATE_KEY,
    SLACK_TOKEN,
    US_SSN,
)
from plugins.dlp.pii_patterns.numbers import IBAN_LENGTHS

#: The options the corpus is measured with: national formats of four regions.
OPTIONS = {"phone_regions": ["US", "GB", "DE", "FR"]}


@dataclass(frozen=True)
class Sample:
    """A text holding ``value`` once: a true value of ``entity_type``, or a look-alike of it."""

    entity_type: str
    value: str
    text: str
    positive: bool

    @property
    def start(self) -> int:
        return self.text.index(self.value)

    @property
    def end(self) -> int:
        return self.start + len(self.value)


_random = random.Random(20261208)
ALNUM = string.ascii_letters + string.digits
URLSAFE = ALNUM + "-_"


def _token(size: int, alphabet: str = ALNUM) -> str:
    while True:
        value = "".join(_random.choice(alphabet) for _ in range(size))
        lowered = value.lower()
        # A random string that happens to hold a placeholder word would be a look-alike.
        if not any(word in lowered for word in ("xxxx", "your", "fake", "here", "test")):
            return value


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _luhn_complete(prefix: str, size: int) -> str:
    body = prefix + "".join(_random.choice(string.digits) for _ in range(size - len(prefix) - 1))
    for check in string.digits:
        number = body + check
        total = 0
        for position, char in enumerate(reversed(number)):
            digit = int(char)
            if position % 2:
                digit = digit * 2 - 9 if digit > 4 else digit * 2
            total += digit
        if total % 10 == 0:
            return number
    raise AssertionError("unreachable")


def iban(country: str, bban: str) -> str:
    """The IBAN of ``bban`` in ``country``, with its check digits computed."""
    assert len(bban) + 4 == IBAN_LENGTHS[country], (country, bban)
    moved = bban + country + "00"
    check = 98 - int("".join(str(int(char, 36)) for char in moved)) % 97
    return f"{country}{check:02d}{bban}"


def grouped(value: str, size: int = 4, separator: str = " ") -> str:
    return separator.join(value[i : i + size] for i in range(0, len(value), size))


# --- sentences ------------------------------------------------------------------------------------

SENTENCES = [
    "Please reach out to {} if anything changes before Friday.",
    "For the record, the value on file is {} according to the last export.",
    "I copied {} from the onboarding form into the ticket.",
    "The customer wrote: my details are {}, please update the account.",
    "Can you double-check {}? The system rejected it yesterday.",
    "Summary of the call: they confirmed {} and asked for a receipt.",
    "Update the CRM entry with {} and close the case.",
    "Here it is: {}",
    '{{"note": "contact {}", "priority": "high"}}',
    "- {} (verified by phone)",
]


def _place(entity_type: str, values: list[str], sentences: list[str] | None = None) -> list[Sample]:
    sentences = sentences or SENTENCES
    return [
        Sample(entity_type, value, sentences[i % len(sentences)].format(value), True)
        for i, value in enumerate(values)
    ]


def _negative(entity_type: str, texts: list[tuple[str, str]]) -> list[Sample]:
    return [Sample(entity_type, value, text, False) for value, text in texts]


# --- true values ----------------------------------------------------------------------------------

EMAILS = [
    "alice.smith@example.com", "bob@example.org", "carol+invoices@example.net",
    "dave_o-connor@mail.example.co.uk", "eve.w.2024@sub.example.io", "Frank.Miller@Example.COM",
    "grace.hopper1906@example.edu", "h.nakamura@example.jp", "isabel%ops@example.com",
    "j.doe@my-company.example", "k99@example.de", "laura.martinez@correo.example.es",
    "mike.ross@firm.example.com", "nina-k@example.fr", "oscar@a.example.ch", "pat.lee@example.museum",
    "quinn.r@example.co", "rahul.sharma@example.in", "sara.o'brien@example.ie".replace("'", ""),
    "tom.baker@bbc-example.co.uk", "ursula@example.at", "victor.hugo@lettres.example.fr",
    "wendy@support.example.com", "xiao.ming@example.cn", "yusuf.demir@example.com.tr",
    "zoe.clark@example.ca",
]  # fmt: skip

PHONES = [
    "+1-415-555-0132", "(415) 555-0132", "415-555-0198", "415.555.0147", "+1 (212) 555-0147",
    "+1 212 555 0100", "1-800-555-0199", "(646) 555-0123", "+14155550132", "212-555-0190",
    "+44 20 7946 0958", "020 7946 0958", "0044 20 7946 0018", "+44 (0)20 7946 0123", "+44 161 496 0123",
    "0161 496 0456", "+49 30 123456", "030 123456", "+49 89 1234567", "089 12345678",
    "+33 1 23 45 67 89", "01 23 45 67 89", "+33 6 12 34 56 78", "+61 2 9876 5432", "+81 3-1234-5678",
    "+34 912 345 678", "+39 06 1234 5678", "+31 20 123 4567", "+91 98765 43210", "+55 11 91234-5678",
]  # fmt: skip


def _ssns() -> list[str]:
    values = []
    areas = [a for a in range(1, 900) if a != 666]
    for i in range(24):
        area, group, serial = _random.choice(areas), _random.randint(1, 99), _random.randint(1, 9999)
        separator = "-" if i % 3 else " "
        values.append(f"{area:03d}{separator}{group:02d}{separator}{serial:04d}")
    return values


SSNS = _ssns()
#: Bare nine digits, with the words that make them a social security number.
BARE_SSNS = [
    ("219456789", "Her SSN is 219456789, as on the card."),
    ("401233456", "ssn: 401233456"),
    ("532118790", "Social security number 532118790 was verified."),
    ("667012345", "SSN#667012345 (from the intake form)"),
    ("078143200", "The social-security no. on file: 078143200"),
]

CARDS = [
    "4111111111111111", "4111 1111 1111 1111", "4111-1111-1111-1111", "4012888888881881",
    "4222222222222", "5555555555554444", "5555 5555 5555 4444", "5105105105105100", "2223003122003222",
    "378282246310005", "3782 822463 10005", "371449635398431", "6011111111111117", "6011 0009 9013 9424",
    "30569309025904", "3056 930902 5904", "3530111333300000", "3566 0020 2036 0505", "6200000000000005",
    "6759649826438453", _luhn_complete("4", 16), _luhn_complete("51", 16), _luhn_complete("37", 15),
    grouped(_luhn_complete("4", 16), 4, "-"), grouped(_luhn_complete("55", 16)),
    _luhn_complete("4", 19), _luhn_complete("65", 16),
]  # fmt: skip


def _digits(size: int) -> str:
    return "".join(_random.choice(string.digits) for _ in range(size))


def _upper(size: int) -> str:
    return "".join(_random.choice(string.ascii_uppercase) for _ in range(size))


def _ibans() -> list[str]:
    made = [
        iban("DE", "370400440532013000"), iban("GB", "WEST12345698765432"), iban("FR", _digits(23)),
        iban("ES", _digits(20)), iban("IT", "X" + _digits(22)), iban("NL", "ABNA" + _digits(10)),
        iban("BE", _digits(12)), iban("CH", _digits(17)), iban("AT", _digits(16)), iban("PL", _digits(24)),
        iban("SE", _digits(20)), iban("NO", _digits(11)), iban("IE", "AIBK" + _digits(14)),
        iban("PT", _digits(21)), iban("DK", _digits(14)), iban("FI", _digits(14)), iban("LU", _digits(16)),
        iban("DE", _digits(18)), iban("GB", _upper(4) + _digits(14)), iban("FR", _digits(23)),
        iban("ES", _digits(20)), iban("IT", _upper(1) + _digits(22)), iban("NL", _upper(4) + _digits(10)),
        iban("CZ", _digits(20)), iban("HU", _digits(24)),
    ]  # fmt: skip
    return [grouped(value) if i % 2 == 0 else value for i, value in enumerate(made)]


IBANS = _ibans()

BARE_PHONES = [
    ("4155550132", "Call me on 4155550132 after five."),
    ("02079460958", "Tel: 02079460958 (office)"),
    ("2125550147", "her mobile is 2125550147"),
    ("07946095812", "Phone 07946095812"),
    ("+442079460958", "Reach the desk at +442079460958."),
]

IPS = [
    "192.168.1.10", "10.0.0.1", "172.16.254.3", "8.8.8.8", "203.0.113.42", "198.51.100.7",
    "255.255.255.255", "100.64.12.9", "52.94.236.248", "127.0.0.1", "2001:db8::1",
    "2001:0db8:85a3:0000:0000:8a2e:0370:7334", "fe80::1ff:fe23:4567:890a", "::1",
    "2001:db8:3333:4444:5555:6666:7777:8888", "2606:4700:4700::1111", "::ffff:192.0.2.128",
    "2001:db8:0:1::42", "fd12:3456:789a:1::1", "2001:DB8::ABCD:12",
]  # fmt: skip
IP_SENTENCES = [
    "The request came from {} at 03:14 UTC.",
    "Whitelist {} in the firewall before the deploy.",
    "ssh admin@host failed; the server at {} refused the key.",
    "Set DB_HOST={} in the staging env file.",
    "Logs show {} hammering the login endpoint.",
]
IP_EXTRA = [
    ("10.1.2.3", "curl http://10.1.2.3:8080/health returned 503"),
    ("192.0.2.15", "subnet 192.0.2.15/24 is reserved"),
    ("2001:db8::7", "connect to [2001:db8::7]:443 timed out"),
    ("172.31.0.5", "IP: 172.31.0.5."),
    ("203.0.113.200", "from=203.0.113.200, to=internal"),
]


def _pem(kind: str, lines: int, newline: str) -> str:
    body = (
        newline.join(_token(64, ALNUM + "+/") for _ in range(lines))
        + newline
        + _token(24, ALNUM + "+/")
        + "=="
    )
    label = f"{kind} PRIVATE KEY" if kind else "PRIVATE KEY"
    return f"-----BEGIN {label}-----{newline}{body}{newline}-----END {label}-----"


PRIVATE_KEYS = [
    _pem("", 6, "\n"), _pem("RSA", 12, "\n"), _pem("EC", 3, "\n"), _pem("OPENSSH", 5, "\n"),
    _pem("ENCRYPTED", 8, "\n"), _pem("RSA", 10, "\r\n"), _pem("", 4, "\\n"), _pem("RSA", 7, "\\n"),
    _pem("EC", 2, "\\n"), _pem("OPENSSH", 9, "\\n"), _pem("DSA", 6, "\n"), _pem("", 3, "\\r\\n"),
    "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,"
    + _token(32, "0123456789ABCDEF") + "\n\n" + "\n".join(_token(64, ALNUM + "+/") for _ in range(5))
    + "\n-----END RSA PRIVATE KEY-----",
    _pem("", 5, "\n"), _pem("EC", 4, "\\n"), _pem("RSA", 16, "\n"), _pem("", 8, "\\n"),
    _pem("OPENSSH", 3, "\n"), _pem("", 2, "\n"), _pem("ENCRYPTED", 4, "\\n"),
]  # fmt: skip
PEM_SENTENCES = [
    "Here is the key you asked for:\n{}\nKeep it safe.",
    '{{"name": "write_file", "arguments": "{{\\"path\\": \\"id_rsa\\", \\"content\\": \\"{}\\"}}"}}',
    "```\n{}\n```",
    "key material: {} (rotate it next week)",
]


def _jwt(alg: str, claims: dict[str, object], signature_bytes: int) -> str:
    header = _b64url(json.dumps({"alg": alg, "typ": "JWT"}, separators=(",", ":")).encode())
    payload = _b64url(json.dumps(claims, separators=(",", ":")).encode())
    signature = _b64url(bytes(_random.getrandbits(8) for _ in range(signature_bytes)))
    return f"{header}.{payload}.{signature}"


JWTS = [
    _jwt(alg, {"sub": _digits(10), "name": name, "iat": 1700000000 + i * 3600, "scope": "read write"}, size)
    for i, (alg, name, size) in enumerate(
        [("HS256", "Jane Roe", 32), ("RS256", "John Doe", 256), ("ES256", "Ada", 64), ("HS512", "Bo", 64),
         ("RS384", "Cy", 384), ("PS256", "Di", 256), ("EdDSA", "Ed", 64), ("HS384", "Flo", 48),
         ("ES384", "Gus", 96), ("RS512", "Hal", 512), ("HS256", "Ivy", 32), ("ES512", "Jo", 132),
         ("HS256", "Kai", 32), ("RS256", "Lu", 256), ("HS256", "Max", 32), ("ES256", "Ned", 64),
         ("HS256", "Oli", 32), ("RS256", "Pia", 256), ("HS256", "Quy", 32), ("HS256", "Ray", 32)]
    )
]  # fmt: skip
JWT_SENTENCES = [
    "Authorization: Bearer {}",
    "The session cookie was token={}; path=/",
    '{{"access_token": "{}", "expires_in": 3600}}',
    "I pasted the JWT {} into jwt.io and it decoded fine.",
]

OPENAI_KEYS = (
    ["sk-" + _token(48) for _ in range(8)]
    + ["sk-proj-" + _token(156, URLSAFE) for _ in range(8)]
    + ["sk-svcacct-" + _token(120, URLSAFE) for _ in range(3)]
    + ["sk-admin-" + _token(100, URLSAFE) for _ in range(3)]
)
ANTHROPIC_KEYS = ["sk-ant-api03-" + _token(93, URLSAFE) + "AA" for _ in range(18)] + [
    "sk-ant-admin01-" + _token(93, URLSAFE) + "AA" for _ in range(4)
]
GOOGLE_KEYS = ["AIza" + _token(35, URLSAFE) for _ in range(20)]
AWS_KEYS = ["AKIA" + _token(16, string.ascii_uppercase + string.digits) for _ in range(14)] + [
    "ASIA" + _token(16, string.ascii_uppercase + string.digits) for _ in range(6)
]
GITHUB_TOKENS = [
    prefix + _token(36) for prefix in ("ghp_", "gho_", "ghu_", "ghs_", "ghr_") for _ in range(3)
] + ["github_pat_" + _token(22) + "_" + _token(59) for _ in range(6)]
SLACK_TOKENS = (
    [f"xoxb-{_digits(12)}-{_digits(13)}-{_token(24)}" for _ in range(8)]
    + [f"xoxp-{_digits(12)}-{_digits(12)}-{_digits(13)}-{_token(32, '0123456789abcdef')}" for _ in range(6)]
    + [f"xoxa-2-{_digits(12)}-{_token(40)}" for _ in range(2)]
    + [f"https://hooks.slack.com/services/T{_upper(8)}/B{_upper(10)}/{_token(24)}" for _ in range(4)]
)
KEY_SENTENCES = [
    "export API_KEY={}",
    "Use this one: {} (it's the prod key, don't share)",
    'client = Client(api_key="{}")',
    '{{"credentials": {{"token": "{}"}}}}',
    "The leaked value {} showed up in the build log.",
    "headers = {{'Authorization': 'Bearer {}'}}",
]

GENERIC_SECRETS = [
    ("Tr0ub4dor&3x", 'password="Tr0ub4dor&3x"'),
    ("hunter2hunter2", "DB_PASSWORD=hunter2hunter2"),
    ("q8Lz!v2RwP9s", "password: q8Lz!v2RwP9s"),
    ("mK7pQ2xR9vL4nB8w", 'client_secret: "mK7pQ2xR9vL4nB8w"'),
    ("c29tZS1zZWNyZXQtdmFsdWUtMTIz", "api_key = 'c29tZS1zZWNyZXQtdmFsdWUtMTIz'"),
    ("9f86d081884c7d659a2feaa0c55ad015", "SECRET_KEY=9f86d081884c7d659a2feaa0c55ad015"),
    ("Zx9Qw2Er7Ty4Ui1Op", '{\\"api_key\\": \\"Zx9Qw2Er7Ty4Ui1Op\\"}'),
    ("Ab12Cd34Ef56Gh78", "https://api.example.com/v1/items?token=Ab12Cd34Ef56Gh78&page=2"),
    ("Qm9vYmF6MTIzNDU2Nzg5", "Authorization: Bearer Qm9vYmF6MTIzNDU2Nzg5"),
    ("s3cr3t-V4lue-2024", "mysql --user=app --password=s3cr3t-V4lue-2024 prod"),
    ("pX7#kL2$mN9@", "apiKey: 'pX7#kL2$mN9@'"),
    ("8e1f2a9c-4b7d-4e6a-9f3c-2d1b0a9e8f7c", '"refresh_token": "8e1f2a9c-4b7d-4e6a-9f3c-2d1b0a9e8f7c"'),
    ("R2d2C3po!Bb8", "wifi passphrase: R2d2C3po!Bb8"),
    ("AbCdEf123456", "accessToken = 'AbCdEf123456';"),
    ("dG9rZW4tMjAyNC0xMi0wOA", "auth_token: dG9rZW4tMjAyNC0xMi0wOA"),
    ("Winter2024!Sun", "The admin password is set via ADMIN_PASSWORD=Winter2024!Sun in .env"),
    ("ZGVwbG95LWtleS05OTk5", 'deploy_key := "ZGVwbG95LWtleS05OTk5"'),
    ("Vx93jKs0Lq2Mz", "pwd=Vx93jKs0Lq2Mz"),
    ("4f3c2b1a9e8d7c6b5a4f3e2d", "STRIPE_SECRET=4f3c2b1a9e8d7c6b5a4f3e2d"),
    ("N0t-S0-S1mple#", "credentials: N0t-S0-S1mple#"),
    ("u7Hk2Lp9Qr4Ws6", "'password' => 'u7Hk2Lp9Qr4Ws6',"),
    ("Bz8Kq1Wm5Xn3", "private_key=Bz8Kq1Wm5Xn3"),
    ("dXNlcjpwYXNzd29yZA==", "curl -H 'Authorization: Basic dXNlcjpwYXNzd29yZA==' https://example.com"),
    ("S3cretPw!2024", "DATABASE_URL = 'postgres://admin:S3cretPw!2024@db.internal:5432/app'"),
    ("xK9mQ2vL7pR4", "amqp://worker:xK9mQ2vL7pR4@rabbit:5672//"),
    (
        "ya29.a0AfH6SMBx3kLmNoPqRsTuVwXyZ012345",
        "curl -H 'Authorization: Bearer ya29.a0AfH6SMBx3kLmNoPqRsTuVwXyZ012345' https://api.example.com",
    ),
]

POSITIVES: list[Sample] = [
    *_place(EMAIL_ADDRESS, EMAILS),
    Sample(EMAIL_ADDRESS, "anna@example.com", "Write to <anna@example.com> or call.", True),
    Sample(EMAIL_ADDRESS, "ben.k@example.org", "mailto:ben.k@example.org", True),
    *_place(PHONE_NUMBER, PHONES),
    *[Sample(PHONE_NUMBER, value, text, True) for value, text in BARE_PHONES],
    *_place(US_SSN, SSNS),
    *[Sample(US_SSN, value, text, True) for value, text in BARE_SSNS],
    *_place(CREDIT_CARD, CARDS),
    Sample(CREDIT_CARD, "4111111111111111", "Card (4111111111111111) on file.", True),
    Sample(CREDIT_CARD, "5555 5555 5555 4444", "cards: [5555 5555 5555 4444, exp 12/27]", True),
    Sample(CREDIT_CARD, "4012888888881881", '{"pan":"4012888888881881","cvv":"123"}', True),
    *_place(IBAN_CODE, IBANS),
    *_place(IP_ADDRESS, IPS, IP_SENTENCES),
    *[Sample(IP_ADDRESS, value, text, True) for value, text in IP_EXTRA],
    *_place(PRIVATE_KEY, PRIVATE_KEYS, PEM_SENTENCES),
    *_place(JWT, JWTS, JWT_SENTENCES),
    *_place(OPENAI_API_KEY, OPENAI_KEYS, KEY_SENTENCES),
    *_place(ANTHROPIC_API_KEY, ANTHROPIC_KEYS, KEY_SENTENCES),
    *_place(GOOGLE_API_KEY, GOOGLE_KEYS, KEY_SENTENCES),
    *_place(AWS_ACCESS_KEY, AWS_KEYS, KEY_SENTENCES),
    # AWS's documented example keys: what people check a DLP set-up with.
    Sample(AWS_ACCESS_KEY, "AKIAIOSFODNN7EXAMPLE", "aws_access_key_id = AKIAIOSFODNN7EXAMPLE", True),
    Sample(AWS_ACCESS_KEY, "ASIAIOSFODNN7EXAMPLE", "Session ASIAIOSFODNN7EXAMPLE", True),
    *_place(GITHUB_TOKEN, GITHUB_TOKENS, KEY_SENTENCES),
    *_place(SLACK_TOKEN, SLACK_TOKENS, KEY_SENTENCES),
    *[Sample(GENERIC_SECRET, value, text, True) for value, text in GENERIC_SECRETS],
]


# --- look-alikes ----------------------------------------------------------------------------------


def _bad_luhn(number: str) -> str:
    last = int(number[-1])
    return number[:-1] + str((last + 1) % 10)


def _bad_iban(value: str) -> str:
    digits = value[2:4]
    return value[:2] + f"{(int(digits) + 1) % 100:02d}" + value[4:]


NEGATIVES: list[Sample] = [
    *_negative(
        CREDIT_CARD,
        [
            ("4111 1111 1111 1112", "Card 4111 1111 1111 1112 was declined (typo)."),
            ("4111111111111121", "Try 4111111111111121 again."),
            ("5555-5555-5555-4445", "Charge 5555-5555-5555-4445 failed."),
            ("3782 822463 10006", "Amex 3782 822463 10006 is not valid."),
            ("1234567812345670", "Account ref 1234567812345670 (internal)."),
            ("9111111111111119", "Loyalty number 9111111111111119."),
            ("7000 1234 5678 9012", "Gift card 7000 1234 5678 9012."),
            ("1Z999AA10123456784", "UPS tracking 1Z999AA10123456784."),
            ("9400 1118 9922 3197 4284 90", "USPS tracking 9400 1118 9922 3197 4284 90."),
            ("123456789012345678901", "Batch 123456789012345678901 was processed."),
            ("978-3-16-148410-0", "ISBN 978-3-16-148410-0 is the second edition."),
            ("978 0 306 40615 7", "ISBN 978 0 306 40615 7 (paperback)."),
            ("0-306-40615-2", "ISBN-10 0-306-40615-2."),
            ("2024 1231 0000 0001", "Invoice 2024 1231 0000 0001 is overdue."),
            ("4111-1111-1111", "Partial card 4111-1111-1111 only."),
            ("4111 11", "Card starting 4111 11."),
            ("12345678901234", "Customer number 12345678901234."),
            (_bad_luhn(CARDS[20]), f"Card {_bad_luhn(CARDS[20])} bounced."),
            (_bad_luhn(CARDS[21]), f"Card {_bad_luhn(CARDS[21])} bounced."),
            ("6011 1111 1111 1118", "Discover 6011 1111 1111 1118 rejected."),
        ],
    ),
    *_negative(
        US_SSN,
        [
            ("000-12-3456", "SSN 000-12-3456 is invalid."),
            ("666-12-3456", "SSN 666-12-3456 cannot be issued."),
            ("912-34-5678", "ITIN-like 912-34-5678."),
            ("987-65-4321", "Example 987-65-4321."),
            ("123-00-4567", "Group zero 123-00-4567."),
            ("123-45-0000", "Serial zero 123-45-0000."),
            ("123-45-6789", "The classic example 123-45-6789."),
            ("078-05-1120", "The Woolworth card number 078-05-1120."),
            ("219456789", "Reference 219456789 for the shipment."),
            ("000000000", "SSN 000000000 placeholder."),
            ("111-11-1111", "SSN 111-11-1111 (test)."),
            ("12-3456789", "EIN 12-3456789 of the company."),
            ("1234-56-789", "Part number 1234-56-789."),
            ("123-456-789", "Routing 123-456-789."),
            ("900-12-3456", "SSN 900-12-3456 is out of range."),
            ("ssn 12345", "The ssn 12345 field is too short."),
        ],
    ),
    *_negative(
        PHONE_NUMBER,
        [
            ("2024-03-15", "Released on 2024-03-15 after review."),
            ("15.03.2024", "Termin am 15.03.2024 um 10 Uhr."),
            ("03/15/2024", "Due 03/15/2024."),
            ("12:30:45", "The job ran at 12:30:45."),
            ("2024-03-15T10:30:00Z", "Timestamp 2024-03-15T10:30:00Z."),
            ("1700000000", "Unix time 1700000000."),
            ("10.0.19045.2965", "Windows build 10.0.19045.2965."),
            ("3.11.7", "Python 3.11.7 is installed."),
            ("1.2.3.4.5", "Package 1.2.3.4.5 on the index."),
            ("3.14159265", "Pi is 3.14159265."),
            ("1,234,567", "Revenue 1,234,567 dollars."),
            ("#4155550132", "Order #4155550132 shipped."),
            ("# 2125550199", "Ticket # 2125550199 closed."),
            ("123-4567", "Extension 123-4567."),
            ("555-0132", "Call 555-0132."),
            ("+1 415 555 013", "Number +1 415 555 013 is too short."),
            ("+44 20 7946 09", "Number +44 20 7946 09 is too short."),
            ("(000) 555-0132", "Bad area (000) 555-0132."),
            ("+999 123 456 789", "Unknown country +999 123 456 789."),
            ("20240315", "Build 20240315 passed."),
            ("INV-2024-001234", "Invoice INV-2024-001234."),
            ("ORD-7783-2291-001", "Order ORD-7783-2291-001."),
            ("PO 4500012345", "Purchase order PO 4500012345."),
            ("123e4567-e89b-12d3-a456-426614174000", "UUID 123e4567-e89b-12d3-a456-426614174000."),
            ("550e8400-e29b-41d4-a716-446655440000", "id=550e8400-e29b-41d4-a716-446655440000"),
            ("a94a8fe5ccb19ba61c4c0873d391e987982fbbd3", "Commit a94a8fe5ccb19ba61c4c0873d391e987982fbbd3."),
            ("1234567", "Code 1234567."),
            ("12 34 56", "Table row 12 34 56."),
            ("0.0.0.0.0.1", "Version 0.0.0.0.0.1."),
            ("99.99", "Price 99.99."),
            ("4155550132abc", "Token 4155550132abc."),
            ("v1.415.555.0132", "Tag v1.415.555.0132."),
            ("2147483647", "INT_MAX is 2147483647 on this platform."),
            ("3769704066", "seed = [3769704066, 1170797179, 4108474671]"),
            ("2125550147", "example_number='2125550147'"),
            ("4155550132", "Order number 4155550132 was shipped."),
        ],
    ),
    *_negative(
        IBAN_CODE,
        [
            (_bad_iban(IBANS[1]), f"IBAN {_bad_iban(IBANS[1])} bounced."),
            (_bad_iban(IBANS[2]), f"IBAN {_bad_iban(IBANS[2])} bounced."),
            (_bad_iban(IBANS[3]), f"IBAN {_bad_iban(IBANS[3])} bounced."),
            (_bad_iban(IBANS[5]), f"IBAN {_bad_iban(IBANS[5])} bounced."),
            (_bad_iban(IBANS[7]), f"IBAN {_bad_iban(IBANS[7])} bounced."),
            (_bad_iban(IBANS[9]), f"IBAN {_bad_iban(IBANS[9])} bounced."),
            ("DE89 3704 0044 0532 0130 01", "IBAN DE89 3704 0044 0532 0130 01 has a typo."),
            ("DE89 3704 0044 0532 0130", "IBAN DE89 3704 0044 0532 0130 is too short."),
            ("XX82 WEST 1234 5698 7654 32", "IBAN XX82 WEST 1234 5698 7654 32 has no country."),
            ("GB82 WEST 1234 5698 7654", "IBAN GB82 WEST 1234 5698 7654 is cut."),
            ("AB12 CDEF 3456 7890", "Serial AB12 CDEF 3456 7890."),
            ("SKU12345678901234", "Item SKU12345678901234."),
            ("DE00 0000 0000 0000 0000 00", "Template DE00 0000 0000 0000 0000 00."),
            ("FR76 XXXX XXXX XXXX XXXX XXXX XXX", "Placeholder FR76 XXXX XXXX XXXX XXXX XXXX XXX."),
            ("NL91ABNA041716430", "NL91ABNA041716430 misses a digit."),
            ("RFC1234 5678 9012", "See RFC1234 5678 9012."),
        ],
    ),
    *_negative(
        IP_ADDRESS,
        [
            ("256.1.2.3", "Host 256.1.2.3 is invalid."),
            ("1.2.3", "Version 1.2.3 shipped."),
            ("192.168.1", "Prefix 192.168.1 only."),
            ("01.02.03.04", "Chapter 01.02.03.04."),
            ("1.2.3.4.5", "Section 1.2.3.4.5."),
            ("version 1.2.3.4", "Upgrade to version 1.2.3.4 today."),
            ("v 10.0.0.1", "Release v 10.0.0.1 notes."),
            ("build 4.1.0.12", "Nightly build 4.1.0.12 failed."),
            ("999.999.999.999", "Mask 999.999.999.999."),
            ("00:1A:2B:3C:4D:5E", "MAC 00:1A:2B:3C:4D:5E."),
            ("12:30:45", "At 12:30:45 the job ran."),
            ("std::vector", "Use std::vector here."),
            ("Add::add", "impl Add::add for Point."),
            ("2001:db8:::1", "Bad address 2001:db8:::1."),
            ("fe80::1::2", "Bad address fe80::1::2."),
            ("1:2:3", "Ratio 1:2:3."),
            ("10:00-12:00", "Open 10:00-12:00."),
            ("a::b", "Ruby a::b style"),
            ("1.1.1.1.1", "Outline 1.1.1.1.1."),
            ("300.1.1.1", "Value 300.1.1.1."),
            ("x[::2]", "evens = x[::2]"),
            ("a[1::3]", "print(a[1::3], b[4::6])"),
            ("§4.2.3.2", "as RFC 5891 §4.2.3.2 says"),
            (">= 3.10.0.0", "typing_extensions >= 3.10.0.0 is required"),
            ("3.3.2.3", "see section 3.3.2.3 of the spec"),
        ],
    ),
    *_negative(
        EMAIL_ADDRESS,
        [
            ("@username", "Thanks @username for the review."),
            ("user@localhost", "Login as user@localhost."),
            ("name(at)example.com", "Write to name(at)example.com."),
            ("icon@2x.png", "Use icon@2x.png for retina."),
            ("alice@example", "alice@example is not complete."),
            ("pkg@1.2.3", "Install pkg@1.2.3 now."),
            ("a@b.c", "Short a@b.c address."),
            ("alice.@example.com", "Typo alice.@example.com here."),
            ("@example.com", "Anyone @example.com can join."),
            ("foo@", "Dangling foo@ here."),
            ("@@", "Weird @@ token."),
            ("logo@3x.jpg", "Asset logo@3x.jpg."),
        ],
    ),
    *_negative(
        OPENAI_API_KEY,
        [
            (
                "sk-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
                "OPENAI_KEY=sk-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
            ),
            ("sk-your-api-key-here-1234567890", "Set sk-your-api-key-here-1234567890 in the env."),
            ("sk-proj-XXXXXXXXXXXXXXXXXXXXXXXXXXXX", "Key: sk-proj-XXXXXXXXXXXXXXXXXXXXXXXXXXXX"),
            ("sk-...", "Keys look like sk-... in the dashboard."),
            ("sk-1234", "The key sk-1234 is too short."),
            ("sk-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "Dummy sk-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa."),
            ("task-management-system-overview", "See task-management-system-overview."),
            ("risk-assessment-2024-final-version", "File risk-assessment-2024-final-version.docx"),
            (
                "sk-example-key-abcdefghijklmnopqrstuvwxyz",
                "Docs use sk-example-key-abcdefghijklmnopqrstuvwxyz.",
            ),
            ("sk-REDACTED-0000000000000000000000", "Logged sk-REDACTED-0000000000000000000000."),
        ],
    ),
    *_negative(
        ANTHROPIC_API_KEY,
        [
            (
                "sk-ant-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
                "ANTHROPIC_API_KEY=sk-ant-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
            ),
            ("sk-ant-api03-your-key-here", "Paste sk-ant-api03-your-key-here."),
            ("sk-ant-...", "It starts with sk-ant-..."),
            (
                "sk-ant-api03-XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
                "e.g. sk-ant-api03-XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
            ),
        ],
    ),
    *_negative(
        GOOGLE_API_KEY,
        [
            ("AIzaSyXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX", "key=AIzaSyXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"),
            ("AIzaSy...", "Google keys start AIzaSy..."),
            ("AIzaShort123", "Truncated AIzaShort123."),
            ("AIzaSyA-your-google-api-key-here-0000", "AIzaSyA-your-google-api-key-here-0000 goes here"),
        ],
    ),
    *_negative(
        AWS_ACCESS_KEY,
        [
            ("AKIAXXXXXXXXXXXXXXXX", "Use AKIAXXXXXXXXXXXXXXXX as a placeholder."),
            ("AKIA1234", "Prefix AKIA1234 only."),
            ("AKIAAAAAAAAAAAAAAAAA", "Dummy AKIAAAAAAAAAAAAAAAAA."),
            ("XAKIAQ3EGRTDMZ7PXKL4NX", "Glued XAKIAQ3EGRTDMZ7PXKL4NX value."),
        ],
    ),
    *_negative(
        GITHUB_TOKEN,
        [
            (
                "ghp_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
                "GITHUB_TOKEN=ghp_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
            ),
            ("ghp_1234", "Token ghp_1234 is short."),
            ("ghp_...", "Classic tokens look like ghp_..."),
            (
                "github_pat_XXXXXXXXXXXXXXXXXXXXXX_XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
                "github_pat_XXXXXXXXXXXXXXXXXXXXXX_XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
            ),
            ("gh_pages_branch", "Deploy to gh_pages_branch."),
            ("ghp_your_personal_access_token_here", "Replace ghp_your_personal_access_token_here."),
        ],
    ),
    *_negative(
        SLACK_TOKEN,
        [
            ("xoxb-your-token", "SLACK_BOT_TOKEN=xoxb-your-token"),
            (
                "xoxb-xxxxxxxxxxxx-xxxxxxxxxxxxx-xxxxxxxxxxxxxxxxxxxxxxxx",
                "token: xoxb-xxxxxxxxxxxx-xxxxxxxxxxxxx-xxxxxxxxxxxxxxxxxxxxxxxx",
            ),
            ("xoxp-...", "User tokens start with xoxp-..."),
            (
                "https://hooks.slack.com/services/T000/B000/XXXX",
                "Webhook https://hooks.slack.com/services/T000/B000/XXXX",
            ),
            (
                "https://hooks.slack.com/services/TXXXXXXXX/BXXXXXXXX/XXXXXXXXXXXXXXXXXXXXXXXX",
                "url: https://hooks.slack.com/services/TXXXXXXXX/BXXXXXXXX/XXXXXXXXXXXXXXXXXXXXXXXX",
            ),
        ],
    ),
    *_negative(
        JWT,
        [
            ("eyJub3QiOiJhIGp3dCJ9.e30.abc", "Not a JWT: eyJub3QiOiJhIGp3dCJ9.e30.abc"),
            ("eyJhbGciOiJIUzI1NiJ9", "Header only eyJhbGciOiJIUzI1NiJ9 here."),
            ("eyJhbGciOiJIUzI1NiJ9.notbase64!.sig", "Broken eyJhbGciOiJIUzI1NiJ9.notbase64!.sig"),
            ("eyJ0eXAiOiJKV1QifQ.eyJzdWIiOiIxIn0.c2ln", "No alg: eyJ0eXAiOiJKV1QifQ.eyJzdWIiOiIxIn0.c2ln"),
            (
                "eyJhbGciOiJIUzI1NiJ9.bm90IGpzb24.c2ln",
                "Payload not JSON: eyJhbGciOiJIUzI1NiJ9.bm90IGpzb24.c2ln",
            ),
            ("eyJhbGc...", "Tokens look like eyJhbGc..."),
        ],
    ),
    *_negative(
        PRIVATE_KEY,
        [
            (
                "-----BEGIN PUBLIC KEY-----",
                "-----BEGIN PUBLIC KEY-----\n" + _token(64, ALNUM + "+/") + "\n-----END PUBLIC KEY-----",
            ),
            (
                "-----BEGIN CERTIFICATE-----",
                "-----BEGIN CERTIFICATE-----\n"
                + _token(64, ALNUM + "+/")
                + "\n"
                + _token(64, ALNUM + "+/")
                + "\n-----END CERTIFICATE-----",
            ),
            (
                "-----BEGIN PRIVATE KEY-----\n...\n-----END PRIVATE KEY-----",
                "Format:\n-----BEGIN PRIVATE KEY-----\n...\n-----END PRIVATE KEY-----",
            ),
            (
                "-----BEGIN RSA PRIVATE KEY-----\\n<your key here>\\n-----END RSA PRIVATE KEY-----",
                '"key": "-----BEGIN RSA PRIVATE KEY-----\\n<your key here>\\n-----END RSA PRIVATE KEY-----"',
            ),
            (
                "-----BEGIN OPENSSH PRIVATE KEY-----",
                "The file starts with -----BEGIN OPENSSH PRIVATE KEY----- and ends with the END line.",
            ),
            ("BEGIN PRIVATE KEY", "Look for BEGIN PRIVATE KEY in the file."),
        ],
    ),
    *_negative(
        GENERIC_SECRET,
        [
            ("password", "password=password"),
            ("changeme", "password: changeme"),
            ("<your-key>", 'api_key: "<your-key>"'),
            ("${TOKEN}", "token: ${TOKEN}"),
            ('os.environ["SECRET"]', 'secret = os.environ["SECRET"]'),
            ("********", 'password: "********"'),
            ("xxxxxxxxxxxx", "api_key=xxxxxxxxxxxx"),
            ("null", "token: null"),
            ("YOUR_API_KEY", 'key: "YOUR_API_KEY"'),
            ("getpass()", "password = getpass()"),
            ("1024", '"max_tokens": 1024'),
            ("customer_id", "primary key: customer_id"),
            ("123456789", "token_count=123456789"),
            ("https://example.com/login", "auth: https://example.com/login"),
            ("favourite colour", "password_hint: favourite colour"),
            ("value", "key: value"),
            ("settings.SECRET_KEY", "SECRET_KEY = settings.SECRET_KEY"),
            ("{{ vault_token }}", "token: {{ vault_token }}"),
            ("%(password)s", "password=%(password)s"),
            ("process.env.API_KEY", "apiKey: process.env.API_KEY,"),
            ("abcdefghij", "secret=abcdefghij"),
            ("12345678", "pin_password=12345678"),
            ("correcthorsebatterystaple", "passphrase: correcthorsebatterystaple"),
            ("<redacted>", "token=<redacted>"),
            ("monkey=bananas42", "monkey=bananas42"),
            ("keyboard: 104", "keyboard: 104 keys"),
            ("str", "def login(user: str, password: str) -> None:"),
            ("EXAMPLE", "access_key: EXAMPLE-ACCESS-KEY-1234"),
            ("_2_Key2d", 'def __getitem__(self, key: _2_Key2d) -> "Float64":'),
            ("Ed25519PrivateKey", "def sign(self, private_key: Ed25519PrivateKey | None = None):"),
            ("X25519PublicKey", "def exchange(self, peer_public_key: X25519PublicKey) -> bytes:"),
            ("Comment.Special", "elif token == Comment.Special2:"),
            ("m2m_object", "if backward_key != m2m_object.forward_key1:"),
            ("Required.", ":param refresh_token: Required. Input only."),
            ("Optional.", ":param page_token: Optional. A page token."),
            ("tok_checkpoint_2", 'assert result.continuation_token == "tok_checkpoint_2"'),
            ("TOK_STREAM_FINAL_B64", "'continuationToken': TOK_STREAM_FINAL_B64,"),
            ("ed25519_key", "self._ed25519_key = ed25519_key"),
            ("b64encode", "token = b64encode(userpass).decode()"),
            ("password", "postgres://app:password@localhost/app"),
            ("Basic realm", 'WWW-Authenticate: Basic realm="Restricted Area"'),
            ("ec.EllipticCurvePublicKey", "def verify(public_key: ec.EllipticCurvePublicKey) -> bool:"),
            ("requests.auth.AuthBase", "    auth: requests.auth.AuthBase\n"),
            ("_TYPE_KEYS.get", "type_key = _TYPE_KEYS.get(name)"),
            ("univ.ObjectIdentifier", "protocolEncrKey = univ.ObjectIdentifier(oid)"),
            ("${DB_PASSWORD}", "redis://default:${DB_PASSWORD}@cache:6379/0"),
            ("MLDSA44Ed25519PublicKey", "public_key = MLDSA44Ed25519PublicKey(data)"),
        ],
    ),
]


def _generated_negatives() -> list[Sample]:
    """More look-alikes, built: bad checksums, invalid ranges, identifiers of every kind."""
    hex_digits = "0123456789abcdef"
    made: list[Sample] = []
    for prefix, size in [("4", 16), ("51", 16), ("37", 15), ("6011", 16), ("35", 16)] * 4:
        number = _bad_luhn(_luhn_complete(prefix, size))
        shown = grouped(number) if len(made) % 2 else number
        made.append(Sample(CREDIT_CARD, shown, f"The card {shown} failed validation.", False))
    for value in IBANS[10:]:
        bad = _bad_iban(value)
        made.append(Sample(IBAN_CODE, bad, f"Transfer to {bad} was returned.", False))
    for area, group, serial in [
        (0, 12, 3456), (666, 45, 1234), (900, 12, 3456), (950, 1, 2), (999, 99, 9999), (123, 0, 4567),
        (456, 0, 1), (321, 54, 0), (789, 1, 0), (0, 0, 0), (666, 66, 6666), (901, 23, 4567),
        (912, 11, 1111), (555, 0, 5555), (234, 56, 0), (0, 55, 5555), (222, 22, 2222), (333, 33, 3333),
        (444, 44, 4444), (777, 77, 7777),
    ]:  # fmt: skip
        value = f"{area:03d}-{group:02d}-{serial:04d}"
        made.append(Sample(US_SSN, value, f"Field ssn contains {value}, which is not issued.", False))
    for value in [
        "2023-11-05", "05/11/2023", "5.11.2023", "2023/11/05", "11:45", "23:59:59", "2023-11-05 14:30:00",
        "2023-11-05T14:30:00+01:00", "Q3 2024", "FY2024-25", "1999-12-31", "31.12.1999", "12/31/1999",
        "2024-02-29 23:59", "20231105", "05-11-2023", "2023.11.05", "18:30-19:45", "1 January 2024",
        "14h30",
    ]:  # fmt: skip
        made.append(Sample(PHONE_NUMBER, value, f"Scheduled for {value} as agreed.", False))
    for value in [
        "v1.2.3", "1.0.0-beta.1", "2.7.18", "10.15.7", "version 4.2.1.9", "release 3.3.3.3",
        "build 1.0.0.1042", "node 18.17.1", "chrome 120.0.6099.109", "ver. 2.0.0.1", "5.4.0-150-generic",
        "1.21.0.post1", "version 2.0.0.0", "v 6.1.0.23", "firmware 1.0.3.7.2",
    ]:  # fmt: skip
        made.append(Sample(IP_ADDRESS, value, f"Upgraded to {value} last night.", False))
    for _ in range(10):
        uuid = "-".join(_token(size, hex_digits) for size in (8, 4, 4, 4, 12))
        made.append(Sample(PHONE_NUMBER, uuid, f"request_id={uuid}", False))
    for _ in range(10):
        sha = _token(40, hex_digits)
        made.append(Sample(PHONE_NUMBER, sha, f"Reverted commit {sha} in main.", False))
    for value in ["a1b2c3d", "#4111aa", "#FF5733", "0xDEADBEEF", "#000000", "rgb(255, 87, 51)", "#1e90ff",
                  "0x7fffffff", "#a0a0a0", "hsl(210, 50%, 40%)"]:  # fmt: skip
        made.append(Sample(PHONE_NUMBER, value, f"Use {value} for the header.", False))
    for value in ["978-0-596-52068-7", "978-1-4028-9462-6", "0-596-00048-0", "978 1 86197 876 9",
                  "9780262033848", "ISBN 0262033844", "979-10-90636-07-1", "978-3-598-21500-1",
                  "1-56619-909-3", "978-0-306-40615-7"]:  # fmt: skip
        made.append(Sample(PHONE_NUMBER, value, f"Book: {value}.", False))
    for value in ["7489 2234 1234", "1Z 999 AA1 01 2345 6784", "JJD000390007843210", "LX123456789DE",
                  "9261290100130000000000", "EE123456789US", "420 12345 9400 1000 0000 0000 00",
                  "CP123456785DE", "RR123456785CN", "00340434161094042557"]:  # fmt: skip
        made.append(Sample(PHONE_NUMBER, value, f"Tracking {value} is in transit.", False))
    for value in ["$1,299.99", "€ 1.234,56", "3,500,000", "0.000123", "1 234 567,89 €", "12.5%", "x 1000",
                  "£42.00", "-273.15", "6.02214076e23"]:  # fmt: skip
        made.append(Sample(PHONE_NUMBER, value, f"The total came to {value} in the end.", False))
    for value in ["+1 555 555 5555", "000-000-0000", "(123) 456-7890", "+44 1234", "+49 0", "999-999-9999",
                  "+1 (100) 555-0132", "1-900-000-0000", "+33 12", "+81 0000 0000"]:  # fmt: skip
        made.append(Sample(PHONE_NUMBER, value, f"Dial {value} for help.", False))
    for entity_type, value in [
        (AWS_ACCESS_KEY, "AKIA<ACCESS_KEY_ID>"), (OPENAI_API_KEY, "sk-proj-..."), (GITHUB_TOKEN, "ghp_<token>"),
        (SLACK_TOKEN, "xoxb-<token>"), (GOOGLE_API_KEY, "AIza<key>"), (JWT, "eyJ..."),
        (GENERIC_SECRET, "Bearer <token>"), (GENERIC_SECRET, "Bearer YOUR_TOKEN"),
        (ANTHROPIC_API_KEY, "sk-ant-<key>"), (OPENAI_API_KEY, "sk-XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"),
    ]:  # fmt: skip
        made.append(Sample(entity_type, value, f"Authorization: {value}", False))
    for value in ["password: ", "password = None", "token = ''", "secret: !vault |", "api_key: ${{ secrets.API_KEY }}",
                  "password: '{{ pass }}'", "key_id: 42", "token_type: bearer", "token: expired",
                  "passwordless login"]:  # fmt: skip
        made.append(Sample(GENERIC_SECRET, value, f"config -> {value}", False))
    return made


NEGATIVES += _generated_negatives()
