"""The provider client the settings ask for."""

from __future__ import annotations

from kling import AppyPieClient, KlingClient
from kling.client import TaskProvider
from models.accounts import Account
from models.settings import Settings


class ProviderNotConfigured(RuntimeError):
    """A job asks for a provider this deployment has no credentials for."""


def make_provider(settings: Settings, name: str | None = None) -> TaskProvider:
    # The worker does its own requeueing (slots, backoff), so the client must not retry behind it.
    name = name or settings.kling_provider
    if name == "appypie":
        if settings.appypie_subscription_key is None:
            raise ProviderNotConfigured("APPYPIE_SUBSCRIPTION_KEY is not set")
        return AppyPieClient(
            subscription_key=settings.appypie_subscription_key.get_secret_value(),
            base_url=settings.appypie_api_base,
            max_retries=0,
        )
    if settings.kling_api_key is None and not (settings.kling_access_key and settings.kling_secret_key):
        raise ProviderNotConfigured("set KLING_ACCESS_KEY and KLING_SECRET_KEY, or KLING_API_KEY")
    return KlingClient(
        access_key=settings.kling_access_key,
        secret_key=settings.kling_secret_key.get_secret_value() if settings.kling_secret_key else None,
        api_key=settings.kling_api_key.get_secret_value() if settings.kling_api_key else None,
        base_url=settings.kling_api_base,
        max_retries=0,
    )


def make_account_provider(account: Account) -> TaskProvider:
    """The client of one account from KLING_ACCOUNTS_FILE (validated there: credentials present)."""
    if account.provider == "appypie":
        if account.subscription_key is None:
            raise ProviderNotConfigured(f"account {account.name}: subscription_key is not set")
        return AppyPieClient(
            subscription_key=account.subscription_key.get_secret_value(),
            base_url=account.api_base,
            max_retries=0,
        )
    return KlingClient(
        access_key=account.access_key,
        secret_key=account.secret_key.get_secret_value() if account.secret_key else None,
        api_key=account.api_key.get_secret_value() if account.api_key else None,
        base_url=account.api_base,
        max_retries=0,
    )
