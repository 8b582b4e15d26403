"""The store functions behind the CLI, the admin API and the ``api_keys`` plugin
(``gateway_core.store.keys`` and ``gateway_core.store.users``), on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gateway_core.store import keys, users
from gateway_core.store.models import ApiKey, Organization, Role, User

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


# --- pure helpers --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90m", NOW + timedelta(minutes=90)),
        ("12h", NOW + timedelta(hours=12)),
        ("30d", NOW + timedelta(days=30)),
        ("2w", NOW + timedelta(weeks=2)),
        ("2026-12-31", datetime(2026, 12, 31, tzinfo=UTC)),
        ("2026-12-31T18:30:00", datetime(2026, 12, 31, 18, 30, tzinfo=UTC)),
        ("2026-12-31T18:30:00+02:00", datetime(2026, 12, 31, 16, 30, tzinfo=UTC)),
    ],
)
def test_parse_expires_takes_durations_and_dates(text: str, expected: datetime) -> None:
    assert keys.parse_expires(text, now=NOW) == expected


@pytest.mark.parametrize(
    ("text", "message"), [("0d", "positive"), ("soon", "neither"), ("2026-01-01", "past"), ("30x", "neither")]
)
def test_parse_expires_refuses_the_rest(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        keys.parse_expires(text, now=NOW)


def test_generated_keys_are_random_and_prefixed() -> None:
    generated = {keys.generate_key() for _ in range(100)}
    assert len(generated) == 100
    assert all(key.startswith("lg-") and len(key) == 46 for key in generated)
    key = generated.pop()
    assert keys.visible_prefix(key) == key[:11]


@pytest.mark.parametrize("address", ["", "plain", "a@b", "a b@example.com", "a@@example.com", "@example.com"])
def test_normalize_email_refuses_what_is_not_an_address(address: str) -> None:
    with pytest.raises(users.InvalidEmail):
        users.normalize_email(address)


def test_normalize_email_trims_and_lower_cases() -> None:
    assert users.normalize_email("  Ada.Lovelace+ops@Example.COM ") == "ada.lovelace+ops@example.com"


def test_password_hashes_are_argon2_salted_and_verified() -> None:
    first, second = users.hash_password("a good password"), users.hash_password("a good password")

    assert first.startswith("$argon2id$") and first != second
    assert users.verify_password("a good password", first)
    assert not users.verify_password("a good passwore", first)
    assert not users.verify_password("a good password", None)
    assert not users.verify_password("a good password", "not a hash")


# --- with a database --------------------------------------------------------------------------------------------


def test_create_key_stores_the_digest_and_returns_the_secret_once(store: Any) -> None:
    record, secret = store(lambda: keys.create_key("  ci  ", models=["mock-*"], metadata={"team": "a"}))

    stored = store(lambda: ApiKey.get(id=record.id))
    assert stored.name == "ci"
    assert stored.digest == keys.key_digest(secret) and stored.prefix == secret[:11]
    assert stored.allowed_models == ["mock-*"] and stored.metadata == {"team": "a"}
    assert secret not in repr(stored.__dict__)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"name": ""}, "name"),
        ({"name": "x", "expires_at": datetime.now(UTC) - timedelta(seconds=1)}, "past"),
        ({"name": "x", "models": ["ok", " "]}, "empty"),
        ({"name": "x", "rpm_limit": -1}, "rpm_limit"),
        ({"name": "x", "budget_limit": -0.5}, "budget_limit"),
    ],
)
def test_create_key_refuses_invalid_values(store: Any, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        store(lambda: keys.create_key(**options))


def test_create_key_takes_owners_by_id_and_refuses_unknown_ones(store: Any) -> None:
    async def owned() -> ApiKey:
        org = await Organization.create(name="acme")
        user = await users.create_user("dev@acme.example", org=org)
        record, _ = await keys.create_key("ids", user=str(user.id), org=org.id)
        return await ApiKey.get(id=record.id).prefetch_related("user", "org")

    record = store(owned)
    assert (record.user.email, record.org.name) == ("dev@acme.example", "acme")
    with pytest.raises(LookupError, match="no user"):
        store(lambda: keys.create_key("x", user=uuid.uuid4()))
    with pytest.raises(LookupError, match="no organization"):
        store(lambda: keys.create_key("x", org=uuid.uuid4()))


def test_find_key_by_id_prefix_or_secret(store: Any) -> None:
    record, secret = store(lambda: keys.create_key("findable"))

    for given in (str(record.id), record.prefix, secret):
        assert store(lambda given=given: keys.find_key(given)).id == record.id
    with pytest.raises(keys.KeyNotFound):
        store(lambda: keys.find_key(str(uuid.uuid4())))
    with pytest.raises(keys.KeyNotFound):
        store(lambda: keys.find_key(keys.generate_key()))
    with pytest.raises(keys.KeyNotFound):
        store(lambda: keys.find_key("lg-nothing"))


def test_find_key_refuses_an_ambiguous_prefix(store: Any) -> None:
    async def twins() -> None:
        first, _ = await keys.create_key("one")
        second, _ = await keys.create_key("two")
        await ApiKey.filter(id=second.id).update(prefix=first.prefix)

    store(twins)
    prefix = store(lambda: ApiKey.first()).prefix
    with pytest.raises(keys.AmbiguousKey, match="give the key's id"):
        store(lambda: keys.find_key(prefix))


def test_revoke_key_announces_it_and_keeps_the_first_time(store: Any) -> None:
    class Recorder:
        def __init__(self) -> None:
            self.sent: list[tuple[str, dict[str, Any]]] = []

        async def publish(self, channel: str, message: dict[str, Any]) -> None:
            self.sent.append((channel, message))

    events = Recorder()
    record, _ = store(lambda: keys.create_key("bye"))

    first = store(lambda: keys.revoke_key(record.prefix, events=events))
    second = store(lambda: keys.revoke_key(str(record.id), events=events))

    assert first.revoked_at is not None and second.revoked_at == first.revoked_at
    assert events.sent == [(keys.KEYS_CHANNEL, {"key_id": str(record.id)})] * 2
    assert keys.key_status(second) == "revoked"


def test_list_keys_filters_by_owner_and_revocation(store: Any) -> None:
    async def setup() -> tuple[User, Organization]:
        org = await Organization.create(name="acme")
        user = await users.create_user("a@acme.example")
        await keys.create_key("mine", user=user)
        await keys.create_key("org's", org=org)
        gone, _ = await keys.create_key("gone", user=user)
        await keys.revoke_key(str(gone.id))
        return user, org

    user, org = store(setup)

    def names(**filters: Any) -> list[str]:
        return [key.name for key in store(lambda: keys.list_keys(**filters))]

    assert names() == ["mine", "org's", "gone"]
    assert names(user=user) == ["mine", "gone"]
    assert names(user=str(user.id), include_revoked=False) == ["mine"]
    assert names(org=org.id) == ["org's"]
    summary = keys.key_summary(store(lambda: keys.list_keys(user=user))[0])
    assert summary["owner"] == "a@acme.example" and summary["status"] == "active"
    assert "digest" not in summary


def test_create_user_hashes_the_password_and_refuses_duplicates(store: Any) -> None:
    user = store(lambda: users.create_user("New@Example.com", "long enough", Role.WRITE))

    assert user.email == "new@example.com" and user.role == Role.WRITE
    assert users.verify_password("long enough", user.password_hash)
    with pytest.raises(users.UserExists):
        store(lambda: users.create_user("new@EXAMPLE.com", "long enough"))
    with pytest.raises(users.InvalidPassword):
        store(lambda: users.create_user("other@example.com", "short"))
    with pytest.raises(ValueError, match="superuser"):
        store(lambda: users.create_user("other@example.com", None, "superuser"))
    with pytest.raises(LookupError):
        store(lambda: users.create_user("other@example.com", None, org="nowhere"))


def test_authenticate_user_checks_the_password_and_the_account(store: Any) -> None:
    store(lambda: users.create_user("ops@example.com", "long enough", Role.ADMIN))

    assert store(lambda: users.authenticate_user("OPS@example.com", "long enough")).email == "ops@example.com"
    assert store(lambda: users.authenticate_user("ops@example.com", "wrong password")) is None
    assert store(lambda: users.authenticate_user("nobody@example.com", "long enough")) is None
    assert store(lambda: users.authenticate_user("not an address", "long enough")) is None
    store(lambda: User.filter(email="ops@example.com").update(is_active=False))
    assert store(lambda: users.authenticate_user("ops@example.com", "long enough")) is None


def test_find_user_and_organization_by_id_or_name(store: Any) -> None:
    async def setup() -> tuple[User, Organization]:
        org = await Organization.create(name="acme")
        return await users.create_user("x@acme.example", org=org), org

    user, org = store(setup)

    assert store(lambda: users.find_user("X@acme.example")).id == user.id
    assert store(lambda: users.find_user(user.id)).id == user.id
    assert store(lambda: users.find_organization("acme")).id == org.id
    assert store(lambda: users.find_organization(str(org.id))).id == org.id
    with pytest.raises(LookupError):
        store(lambda: users.find_user("y@acme.example"))
    with pytest.raises(LookupError):
        store(lambda: users.find_organization(uuid.uuid4()))
