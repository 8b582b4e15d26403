"""A fake Google OAuth token endpoint and a fake Vertex AI host, both on 127.0.0.1.

:class:`FakeGoogleOAuth` serves ``POST /token`` as ``oauth2.googleapis.com/token`` does for service
accounts: a form with ``grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`` and an ``assertion``
JWT, whose RS256 signature is verified with the public key of a service account the test created
(:func:`make_service_account`, then :meth:`FakeGoogleOAuth.trust`); ``iss``, ``aud``, ``scope``,
``iat`` and ``exp`` are checked. It answers ``{"access_token", "expires_in", "token_type": "Bearer"}``
or Google's ``{"error", "error_description"}``, counts the exchanges, and can be told to hand out
short-lived tokens, to wait, or to fail.

:class:`FakeVertex` serves the Vertex AI publisher-model methods under
``/v1/projects/{project}/locations/{location}/publishers/...``: ``google/models/{m}:generateContent``,
``:streamGenerateContent`` and ``:predict`` (text embeddings), and ``anthropic/models/{m}:rawPredict``,
``:streamRawPredict`` and ``count-tokens:rawPredict``. Every call needs ``Authorization: Bearer`` with a
live token the fake OAuth endpoint issued (401 ``UNAUTHENTICATED`` otherwise) and the project and
location it was set up with (403 ``PERMISSION_DENIED``). The bodies are handled by the existing fakes:
Gemini calls are forwarded to a :class:`~tests.fakes.gemini_upstream.FakeGemini` and Claude calls to a
:class:`~tests.fakes.anthropic_upstream.FakeAnthropic`, after the Vertex-specific checks: a Claude body
carries ``anthropic_version: "vertex-2023-10-16"`` and no ``model`` (the model is in the URL), except
for ``count-tokens``, whose body names the model.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt
import orjson
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.gemini_upstream import FakeGemini, google_error
from tests.fakes.openai_upstream import embedding_for
from tests.fakes.server import BackgroundServer
from tests.fakes.server import RecordedRequestWithQuery as RecordedRequest

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
ANTHROPIC_VERTEX_VERSION = "vertex-2023-10-16"
VERTEX_EMBEDDING_MODELS = {"text-embedding-005": 768, "gemini-embedding-001": 3072}
#: Longest assertion lifetime Google accepts.
MAX_ASSERTION_SECONDS = 3600


def make_service_account(
    token_uri: str, *, project_id: str = "lockgate-test", name: str = "gateway"
) -> dict[str, Any]:
    """A service-account key file's content, with a freshly generated RSA key."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    email = f"{name}@{project_id}.iam.gserviceaccount.com"
    return {
        "type": "service_account",
        "project_id": project_id,
        "private_key_id": secrets.token_hex(20),
        "private_key": pem,
        "client_email": email,
        "client_id": str(10**20 + secrets.randbelow(10**20)),
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        "universe_domain": "googleapis.com",
    }


# --- the token endpoint ----------------------------------------------------------------------------


@dataclass
class TokenBehaviour:
    """How the token endpoint answers until the next :meth:`FakeGoogleOAuth.behave`."""

    #: ``expires_in`` of issued tokens (Google's tokens live an hour).
    expires_in: int = 3599
    #: Seconds to wait before answering.
    delay: float = 0.0
    #: Refuse every exchange with this status (400 ``invalid_grant`` or a 5xx ``internal_failure``).
    fail_status: int | None = None


def _oauth_error(status: int, error: str, description: str) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps({"error": error, "error_description": description}),
        content_type="application/json",
    )


class FakeGoogleOAuth(BackgroundServer[RecordedRequest]):
    """Google's OAuth 2.0 token endpoint for service-account JWT-bearer grants."""

    name = "fake-google-oauth"
    record_type = RecordedRequest

    def __init__(self) -> None:
        super().__init__()
        self.behaviour = TokenBehaviour()
        #: Successful token exchanges.
        self.exchanges = 0
        #: Issued access token -> (service account, expiry as a Unix time).
        self.issued: dict[str, tuple[str, float]] = {}
        #: Trusted service accounts: client email -> (key id, public key PEM).
        self._accounts: dict[str, tuple[str | None, bytes]] = {}

    @property
    def token_uri(self) -> str:
        return f"{self.url}/token"

    def trust(self, info: dict[str, Any]) -> None:
        """Accept assertions signed by this service account's key."""
        key = serialization.load_pem_private_key(info["private_key"].encode(), password=None)
        public = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        with self._lock:
            self._accounts[info["client_email"]] = (info.get("private_key_id"), public)

    def behave(self, **changes: Any) -> TokenBehaviour:
        self.behaviour = TokenBehaviour(**changes)
        return self.behaviour

    def reset(self) -> None:
        with self._lock:
            self.behaviour = TokenBehaviour()
            self.requests.clear()
            self.exchanges = 0

    def revoke(self, token: str) -> None:
        """Invalidate an issued token before it expires (as a key rotation or a revocation does)."""
        with self._lock:
            self.issued.pop(token, None)

    def token_valid(self, token: str) -> bool:
        with self._lock:
            issued = self.issued.get(token)
        return issued is not None and time.time() < issued[1]

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/token", self._token)

    async def _token(self, request: web.Request) -> web.Response:
        await self._record(request)
        behaviour = self.behaviour
        if behaviour.delay:
            await asyncio.sleep(behaviour.delay)
        if request.content_type != "application/x-www-form-urlencoded":
            return _oauth_error(400, "invalid_request", "Invalid Content-Type for a token request.")
        form = await request.post()
        grant_type = str(form.get("grant_type", ""))
        if grant_type != JWT_BEARER:
            return _oauth_error(400, "unsupported_grant_type", f"Invalid grant_type: {grant_type}")
        assertion = str(form.get("assertion", ""))
        if not assertion:
            return _oauth_error(400, "invalid_request", "Missing required parameter: assertion")
        problem = self._check_assertion(assertion)
        if problem is not None:
            return problem
        if behaviour.fail_status is not None:
            if behaviour.fail_status < 500:
                return _oauth_error(
                    behaviour.fail_status, "invalid_grant", "Invalid grant: account not found"
                )
            return _oauth_error(behaviour.fail_status, "internal_failure", "Backend Error")
        token = "ya29.fake-" + secrets.token_urlsafe(32)
        with self._lock:
            self.exchanges += 1
            email = str(jwt.decode(assertion, options={"verify_signature": False})["iss"])
            self.issued[token] = (email, time.time() + behaviour.expires_in)
        body = {"access_token": token, "expires_in": behaviour.expires_in, "token_type": "Bearer"}
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    def _check_assertion(self, assertion: str) -> web.Response | None:
        try:
            header = jwt.get_unverified_header(assertion)
            claims = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError:
            return _oauth_error(400, "invalid_grant", "Invalid JWT: malformed assertion.")
        with self._lock:
            account = self._accounts.get(str(claims.get("iss")))
        if account is None:
            return _oauth_error(400, "invalid_grant", "Invalid grant: account not found")
        key_id, public_key = account
        if header.get("alg") != "RS256" or (header.get("kid") is not None and header["kid"] != key_id):
            return _oauth_error(400, "invalid_grant", "Invalid JWT Signature.")
        try:
            jwt.decode(
                assertion,
                public_key,
                algorithms=["RS256"],
                audience=self.token_uri,
                options={"require": ["iss", "aud", "iat", "exp"]},
                leeway=5,
            )
        except jwt.InvalidAudienceError:
            return _oauth_error(
                400,
                "invalid_grant",
                f"Invalid JWT: Failed audience check. The expected value was {self.token_uri}",
            )
        except jwt.InvalidSignatureError:
            return _oauth_error(400, "invalid_grant", "Invalid JWT Signature.")
        except jwt.PyJWTError:
            return _oauth_error(
                400,
                "invalid_grant",
                "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. "
                "Check your iat and exp values in the JWT claim.",
            )
        if int(claims["exp"]) - int(claims["iat"]) > MAX_ASSERTION_SECONDS:
            return _oauth_error(
                400,
                "invalid_grant",
                "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. "
                "Check your iat and exp values in the JWT claim.",
            )
        if CLOUD_PLATFORM_SCOPE not in str(claims.get("scope", "")).split():
            return _oauth_error(400, "invalid_scope", "Invalid OAuth scope or ID token audience provided.")
        return None


# --- the Vertex AI host ----------------------------------------------------------------------------


def _google_error(status: int, message: str | None = None) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(google_error(status, message)), content_type="application/json"
    )


def _anthropic_error(message: str) -> web.Response:
    body = {"type": "error", "error": {"type": "invalid_request_error", "message": message}}
    return web.Response(status=400, body=orjson.dumps(body), content_type="application/json")


class FakeVertex(BackgroundServer[RecordedRequest]):
    """Vertex AI's publisher-model endpoints, authenticated by :class:`FakeGoogleOAuth` tokens."""

    name = "fake-vertex"
    record_type = RecordedRequest

    def __init__(
        self,
        oauth: FakeGoogleOAuth,
        gemini: FakeGemini,
        anthropic: FakeAnthropic,
        *,
        project: str = "lockgate-test",
        location: str = "us-east5",
    ) -> None:
        super().__init__()
        self.oauth = oauth
        self.gemini = gemini
        self.anthropic = anthropic
        self.project = project
        self.location = location
        self._session: aiohttp.ClientSession | None = None

    def requests_to(self, method: str) -> list[RecordedRequest]:
        """The recorded calls of one method (``generateContent``, ``rawPredict``, ...)."""
        with self._lock:
            return [r for r in self.requests if r.path.rpartition(":")[2] == method]

    def routes(self, app: web.Application) -> None:
        prefix = "/v1/projects/{project}/locations/{location}/publishers"
        app.router.add_post(prefix + "/google/models/{target}", self._guard(self._google))
        app.router.add_post(prefix + "/anthropic/models/{target}", self._guard(self._anthropic))

    async def started(self) -> None:
        self._session = aiohttp.ClientSession()

    async def stopping(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _guard(
        self, handler: Callable[[web.Request, RecordedRequest, str, str], Awaitable[web.StreamResponse]]
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            recorded = await self._record(request)
            scheme, _, token = request.headers.get("Authorization", "").partition(" ")
            if scheme != "Bearer" or not self.oauth.token_valid(token.strip()):
                return _google_error(
                    401,
                    "Request had invalid authentication credentials. Expected OAuth 2 access token, login "
                    "cookie or other valid authentication credential. See "
                    "https://developers.google.com/identity/sign-in/web/devconsole-project.",
                )
            info = request.match_info
            if info["project"] != self.project or info["location"] != self.location:
                return _google_error(
                    403,
                    "Permission 'aiplatform.endpoints.predict' denied on resource "
                    f"'//aiplatform.googleapis.com{request.path.rpartition(':')[0]}' (or it may not exist).",
                )
            model, _, method = info["target"].partition(":")
            return await handler(request, recorded, model, method)

        return handle

    async def _relay(
        self, request: web.Request, url: str, body: bytes, headers: dict[str, str]
    ) -> web.StreamResponse:
        """POST to a backing fake and stream its answer back as it comes."""
        assert self._session is not None
        async with self._session.post(url, data=body, headers=headers) as upstream:
            response = web.StreamResponse(status=upstream.status)
            response.content_type = upstream.content_type
            await response.prepare(request)
            try:
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
            except aiohttp.ClientError:
                # The backing fake broke the stream on purpose: break this one too.
                if request.transport is not None:
                    request.transport.abort()
                raise asyncio.CancelledError from None
            await response.write_eof()
            return response

    async def _google(
        self, request: web.Request, recorded: RecordedRequest, model: str, method: str
    ) -> web.StreamResponse:
        if method in ("generateContent", "streamGenerateContent"):
            query = f"?{request.query_string}" if request.query_string else ""
            headers = {"Content-Type": "application/json", "x-goog-api-key": self.gemini.api_key}
            url = f"{self.gemini.url}/v1/models/{model}:{method}{query}"
            return await self._relay(request, url, recorded.body, headers)
        if method == "predict":
            return self._predict(recorded, model)
        return _google_error(404, f"Method not found: {method}.")

    def _predict(self, recorded: RecordedRequest, model: str) -> web.Response:
        dimensions = VERTEX_EMBEDDING_MODELS.get(model)
        if dimensions is None:
            return _google_error(
                404,
                f"Publisher Model `projects/{self.project}/locations/{self.location}/publishers/google/models/{model}` not found.",
            )
        data = recorded.json
        instances = data.get("instances") if isinstance(data, dict) else None
        if not isinstance(instances, list) or not instances:
            return _google_error(400, "Invalid JSON payload received. instances: required.")
        parameters = data.get("parameters") or {}
        dimensions = int(parameters.get("outputDimensionality") or dimensions)
        predictions = []
        for instance in instances:
            text = instance.get("content") if isinstance(instance, dict) else None
            if not isinstance(text, str) or not text:
                return _google_error(400, "Invalid JSON payload received. instances.content: required.")
            values = embedding_for(text, dimensions)
            statistics = {"token_count": len(text.split()), "truncated": False}
            predictions.append({"embeddings": {"values": values, "statistics": statistics}})
        billable = sum(len(i["content"]) for i in instances)
        body = {"predictions": predictions, "metadata": {"billableCharacterCount": billable}}
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    async def _anthropic(
        self, request: web.Request, recorded: RecordedRequest, model: str, method: str
    ) -> web.StreamResponse:
        data = recorded.json
        if not isinstance(data, dict):
            return _anthropic_error("There was an issue with the JSON body of your request.")
        version = data.pop("anthropic_version", None)
        headers = {
            "Content-Type": "application/json",
            "x-api-key": self.anthropic.api_key,
            "anthropic-version": "2023-06-01",
        }
        if model == "count-tokens" and method == "rawPredict":
            if version not in (None, ANTHROPIC_VERTEX_VERSION):
                return _anthropic_error(f"anthropic_version: Input should be '{ANTHROPIC_VERTEX_VERSION}'")
            url = f"{self.anthropic.url}/v1/messages/count_tokens"
            return await self._relay(request, url, orjson.dumps(data), headers)
        if method not in ("rawPredict", "streamRawPredict"):
            return _google_error(404, f"Method not found: {method}.")
        if version is None:
            return _anthropic_error("anthropic_version: Field required")
        if version != ANTHROPIC_VERTEX_VERSION:
            return _anthropic_error(f"anthropic_version: Input should be '{ANTHROPIC_VERTEX_VERSION}'")
        if "model" in data:
            return _anthropic_error("model: Extra inputs are not permitted")
        url = f"{self.anthropic.url}/v1/messages"
        return await self._relay(request, url, orjson.dumps({**data, "model": model}), headers)


__all__ = [
    "ANTHROPIC_VERTEX_VERSION",
    "FakeGoogleOAuth",
    "FakeVertex",
    "TokenBehaviour",
    "make_service_account",
]
