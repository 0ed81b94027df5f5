"""SQL record of jobs: tables, the job state machine, engine and session helpers."""

from models.base import Base
from models.db import make_engine, make_sessionmaker, session_scope, upgrade
from models.enums import EventOutcome, ImageStatus, JobStatus, TransitionSource
from models.rules import JobState, Plan, TaskMismatch, can_move, decide, decide_move
from models.statemachine import (
    ApplyResult,
    Created,
    JobNotFound,
    apply_callback,
    apply_provider_task,
    create_job,
    transition,
)
from models.tables import CallbackEvent, Image, Job, Notification, Outbox, Transition
from models.tokens import callback_token, callback_url, check_callback_token

__all__ = [
    "ApplyResult",
    "Base",
    "CallbackEvent",
    "Created",
    "EventOutcome",
    "Image",
    "ImageStatus",
    "Job",
    "JobNotFound",
    "JobState",
    "JobStatus",
    "Notification",
    "Outbox",
    "Plan",
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
    "decide",
    "decide_move",
    "make_engine",
    "make_sessionmaker",
    "session_scope",
    "transition",
    "upgrade",
]
