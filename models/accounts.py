"""Provider accounts: `KLING_ACCOUNTS_FILE` (TOML, one `[[account]]` table each) or, without it,
one account named `default` from the single-account settings. Pure: parsing and validation only;
`load_accounts` reads the file. A bad file raises `AccountsConfigError` with one line naming the
account and the key, never a value.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from kling.kinds import KIND_NAMES, KINDS

if TYPE_CHECKING:
    from models.settings import Settings

DEFAULT_ACCOUNT = "default"
PROVIDERS = ("kling", "appypie")
NAME_RE = re.compile(r"[a-z0-9-]+")
KEYS = frozenset(
    {
        "name",
        "provider",
        "api_base",
        "access_key",
        "secret_key",
        "api_key",
        "subscription_key",
        "concurrency",
        "daily_unit_budget",
        "kinds",
    }
)
# Ignored once the file is set (one WARNING says so).
LEGACY_SETTINGS = (
    "kling_access_key",
    "kling_secret_key",
    "kling_api_key",
    "kling_concurrency",
    "appypie_subscription_key",
)
DEFAULT_API_BASES = {"kling": "https://api-singapore.klingai.com", "appypie": "https://gateway.appypie.com"}


class AccountsConfigError(Exception):
    """A bad accounts file: the message is one line naming the account and the key. Not a
    ValueError on purpose: pydantic would wrap it into a multi-line settings error."""


@dataclass(frozen=True)
class Account:
    name: str
    provider: str  # "kling" or "appypie"
    api_base: str
    concurrency: int
    access_key: str | None = None
    secret_key: SecretStr | None = field(default=None, repr=False)
    api_key: SecretStr | None = field(default=None, repr=False)
    subscription_key: SecretStr | None = field(default=None, repr=False)
    daily_unit_budget: float | None = None
    # Task kinds (kling/kinds.py) routed to this account; the file's default: all its provider offers.
    kinds: tuple[str, ...] = KIND_NAMES

    def serves_kind(self, kind: str) -> bool:
        return kind in self.kinds

    @property
    def configured(self) -> bool:
        """Whether the account has the credentials its provider needs."""
        if self.provider == "appypie":
            return self.subscription_key is not None
        return self.api_key is not None or (self.access_key is not None and self.secret_key is not None)

    def secrets(self) -> list[str]:
        return [s.get_secret_value() for s in (self.secret_key, self.api_key, self.subscription_key) if s]


def _where(index: int, name: object) -> str:
    return f"account {name!r}" if isinstance(name, str) and name else f"account #{index + 1}"


def _string(table: dict[str, Any], key: str, where: str) -> str | None:
    value = table.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise AccountsConfigError(f"{where}: {key} must be a non-empty string")
    return value.strip()


def _secret(table: dict[str, Any], key: str, where: str) -> SecretStr | None:
    value = _string(table, key, where)
    return SecretStr(value) if value is not None else None


def offered_kinds(provider: str) -> tuple[str, ...]:
    """The kinds `provider` offers, in registry order (the gateway: image generation only)."""
    return tuple(name for name, kind in KINDS.items() if provider in kind.providers)


def _kinds(table: dict[str, Any], provider: str, where: str) -> tuple[str, ...]:
    """`kinds = [...]`: registry names the provider offers, at least one; absent = all it offers."""
    if "kinds" not in table:
        return offered_kinds(provider)
    kinds = table["kinds"]
    if not isinstance(kinds, list) or not kinds or not all(isinstance(k, str) for k in kinds):
        raise AccountsConfigError(f"{where}: kinds must be a non-empty list of kind names")
    for kind in kinds:
        if kind not in KINDS:
            known = ", ".join(KIND_NAMES)
            raise AccountsConfigError(f"{where}: kinds: unknown kind {kind!r} (one of {known})")
        if kind not in offered_kinds(provider):
            raise AccountsConfigError(f"{where}: kinds: {kind} is not offered by the {provider} provider")
    return tuple(dict.fromkeys(kinds))


def _one(index: int, table: object) -> Account:
    if not isinstance(table, dict):
        raise AccountsConfigError(f"account #{index + 1}: must be a table ([[account]])")
    name = table.get("name")
    where = _where(index, name)
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise AccountsConfigError(f"{where}: name must match [a-z0-9-]+")
    unknown = sorted(set(table) - KEYS)
    if unknown:
        raise AccountsConfigError(f"{where}: unknown key {unknown[0]}")
    provider = table.get("provider", "kling")
    if provider not in PROVIDERS:
        raise AccountsConfigError(f"{where}: provider must be one of {', '.join(PROVIDERS)}")
    concurrency = table.get("concurrency", 5)
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise AccountsConfigError(f"{where}: concurrency must be an integer >= 1")
    budget = table.get("daily_unit_budget")
    bad_budget = isinstance(budget, bool) or not isinstance(budget, int | float) or budget <= 0
    if budget is not None and bad_budget:
        raise AccountsConfigError(f"{where}: daily_unit_budget must be a number > 0")
    kinds = _kinds(table, provider, where)
    account = Account(
        name=name,
        provider=provider,
        api_base=(_string(table, "api_base", where) or DEFAULT_API_BASES[provider]).rstrip("/"),
        concurrency=concurrency,
        access_key=_string(table, "access_key", where),
        secret_key=_secret(table, "secret_key", where),
        api_key=_secret(table, "api_key", where),
        subscription_key=_secret(table, "subscription_key", where),
        daily_unit_budget=float(budget) if budget is not None else None,
        kinds=kinds,
    )
    if not account.configured:
        needs = "subscription_key" if provider == "appypie" else "access_key and secret_key, or api_key"
        raise AccountsConfigError(f"{where}: credentials missing: set {needs}")
    return account


def parse_accounts(text: str) -> tuple[Account, ...]:
    """The accounts of a TOML document, validated; the first error found raises."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise AccountsConfigError(f"accounts file: not valid TOML ({exc})") from None
    tables = doc.get("account")
    if not isinstance(tables, list) or not tables:
        raise AccountsConfigError("accounts file: no [[account]] table")
    accounts: list[Account] = []
    seen: set[str] = set()
    for index, table in enumerate(tables):
        account = _one(index, table)
        if account.name in seen:
            raise AccountsConfigError(f"account {account.name!r}: name is a duplicate")
        seen.add(account.name)
        accounts.append(account)
    return tuple(accounts)


def accounts_from_settings(settings: Settings) -> tuple[Account, ...]:
    """Without a file: one account `default` serving the settings' provider, exactly as before.
    It may lack credentials (a deployment without provider keys): jobs then fail as before."""
    provider = settings.kling_provider
    return (
        Account(
            name=DEFAULT_ACCOUNT,
            provider=provider,
            api_base=settings.appypie_api_base if provider == "appypie" else settings.kling_api_base,
            concurrency=settings.kling_concurrency,
            access_key=settings.kling_access_key,
            secret_key=settings.kling_secret_key,
            api_key=settings.kling_api_key,
            subscription_key=settings.appypie_subscription_key,
        ),
    )


def legacy_settings_set(settings: Settings) -> list[str]:
    """The single-account settings given explicitly although the file overrides them."""
    return [name.upper() for name in LEGACY_SETTINGS if name in settings.model_fields_set]


def load_accounts(settings: Settings) -> tuple[Account, ...]:
    """The deployment's accounts: the file's when `KLING_ACCOUNTS_FILE` is set, else `default`."""
    path = settings.kling_accounts_file
    if not path:
        return accounts_from_settings(settings)
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise AccountsConfigError(f"KLING_ACCOUNTS_FILE: cannot read {path}: {exc.strerror}") from None
    return parse_accounts(text)
