"""Turn every failure a command can hit into one `Error: ...` line and an exit code, never a traceback."""

from __future__ import annotations

import os
from typing import Any

import click

# Set KLINGCTL_DEBUG=1 to see the traceback an error line stands for.
DEBUG_ENV = "KLINGCTL_DEBUG"


class UsageLine(click.ClickException):
    """Bad input from the user: one line, exit code 2 (click's UsageError prints the usage text too)."""

    exit_code = 2


def first_line(text: object) -> str:
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return lines[0] if lines else ""


def describe(exc: BaseException) -> tuple[str, int]:
    """The one-line message and exit code for an exception a command raised."""
    from botocore.exceptions import BotoCoreError, ClientError
    from kombu.exceptions import OperationalError as BrokerError
    from pydantic import ValidationError as SettingsError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import RedisError
    from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError

    from kling.errors import KlingError
    from kling.errors import ValidationError as RequestInvalid
    from models.accounts import AccountsConfigError

    if isinstance(exc, RequestInvalid):
        return str(exc), 2
    if isinstance(exc, AccountsConfigError):
        return f"configuration: {first_line(exc)}", 2
    if isinstance(exc, KlingError):
        return f"provider: {first_line(exc)}", 1
    if isinstance(exc, SettingsError):
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']).upper() or 'settings'}: {e['msg']}" for e in exc.errors()
        )
        return f"configuration: {problems}", 2
    if isinstance(exc, DBAPIError):
        message = first_line(exc.orig or exc)
        if "no such table" in message or ("relation" in message and "does not exist" in message):
            return f"database: {message} (run `klingctl db upgrade`)", 1
        if isinstance(exc, OperationalError):
            return f"database unreachable: {message}", 1
        return f"database: {message}", 1
    if isinstance(exc, SQLAlchemyError):
        return f"database: {first_line(exc)}", 1
    if isinstance(exc, RedisConnectionError):
        return f"Redis unreachable: {first_line(exc)}", 1
    if isinstance(exc, RedisError):
        return f"Redis: {first_line(exc)}", 1
    if isinstance(exc, BrokerError):
        return f"broker unreachable: {first_line(exc)}", 1
    if isinstance(exc, ClientError | BotoCoreError):
        return f"S3: {first_line(exc)}", 1
    if isinstance(exc, OSError):
        return first_line(exc) or type(exc).__name__, 1
    return f"{type(exc).__name__}: {first_line(exc)}", 1


class FriendlyGroup(click.Group):
    """A click group whose subcommands fail with one clear line (see `describe`)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            if os.environ.get(DEBUG_ENV):
                raise
            message, code = describe(exc)
            raise (UsageLine if code == UsageLine.exit_code else click.ClickException)(message) from None
