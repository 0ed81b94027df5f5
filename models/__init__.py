"""SQL record of jobs: tables, the job state machine, engine and session helpers."""

from models.base import Base
from models.db import make_engine, make_sessionmaker, session_scope, upgrade
from models.enums import EventOutcome, ImageStatus, JobStatus, TransitionSource
from models.statemachine import (
    ApplyResult,
    JobNotFound,
    TaskMismatch,
    apply_callback,
    apply_provider_task,
    can_move,
    create_job,
    transition,
)
from models.tables import CallbackEvent, Image, Job, Notification, Outbox, Transition
from models.tokens import callback_token, callback_url, check_callback_token

__all__ = [
    "ApplyResult",
    "Base",
    "CallbackEvent",
    "EventOutcome",
    "Image",
    "ImageStatus",
    "Job",
    "JobNotFound",
    "JobStatus",
    "Notification",
    "Outbox",
    "TaskMismatch",
    "Transition",
    "TransitionSource",
    "apply_callback",
    "apply_provider_task",
    "callback_token",
    "callback_url",
    "can_move",
    "check_callback_token",
    "create_job",
    "make_engine",
    "make_sessionmaker",
    "session_scope",
    "transition",
    "upgrade",
]
