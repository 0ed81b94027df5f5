"""The app's database handle: one session factory per app, reachable from request handlers."""

from __future__ import annotations

from flask import Flask, current_app
from sqlalchemy.orm import Session, sessionmaker

from models.db import make_engine, make_sessionmaker
from models.settings import Settings

_SESSIONS = "kling.sessions"
_SETTINGS = "kling.settings"


def init_app(app: Flask, settings: Settings, session_factory: sessionmaker[Session] | None = None) -> None:
    # Engines connect lazily, so an app pointed at a database that is down still starts (and answers 503).
    if session_factory is None:
        session_factory = make_sessionmaker(make_engine(settings.database_url))
    app.extensions[_SESSIONS] = session_factory
    app.extensions[_SETTINGS] = settings


def sessions() -> sessionmaker[Session]:
    factory: sessionmaker[Session] = current_app.extensions[_SESSIONS]
    return factory


def app_settings() -> Settings:
    settings: Settings = current_app.extensions[_SETTINGS]
    return settings
