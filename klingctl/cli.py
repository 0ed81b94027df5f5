"""`klingctl`: one click group; the commands live in klingctl.jobs, klingctl.ops and klingctl.demo."""

from __future__ import annotations

import click

from klingctl.accounts import accounts
from klingctl.control import cancel, retry
from klingctl.demo import demo
from klingctl.errors import FriendlyGroup
from klingctl.jobs import jobs, show, submit
from klingctl.ops import beat, db, sweep, webhook, worker
from klingctl.stopping import wait_for_stop
from klingctl.tenants import tenants


@click.group(cls=FriendlyGroup, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Run and inspect the Kling orchestrator.

    Every command reads its configuration from the environment (DATABASE_URL, CELERY_BROKER_URL,
    S3_BUCKET, ...; see the README). Set KLINGCTL_DEBUG=1 to see tracebacks behind error lines.
    """


for _command in (
    submit,
    jobs,
    show,
    cancel,
    retry,
    webhook,
    worker,
    beat,
    db,
    sweep,
    demo,
    accounts,
    tenants,
):
    main.add_command(_command)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option(
    "--port", default=8011, show_default=True, type=click.IntRange(0, 65535), help="0 = any free port."
)
@click.option(
    "--public-url", default=None, help="Base of the image URLs handed out (default: http://host:port)."
)
@click.option("--access-key", envvar="KLING_ACCESS_KEY", default=None, help="JWT iss accepted.")
@click.option("--secret-key", envvar="KLING_SECRET_KEY", default=None, help="JWT HS256 secret.")
@click.option("--api-key", envvar="KLING_API_KEY", default=None, help="Static bearer key accepted.")
@click.option(
    "--subscription-key", envvar="APPYPIE_SUBSCRIPTION_KEY", default=None, help="Appy Pie gateway key."
)
@click.option("--concurrency", default=5, show_default=True, type=click.IntRange(0), help="Account slots.")
@click.option(
    "--task-seconds", default=2.0, show_default=True, type=click.FloatRange(0), help="Task duration."
)
@click.option(
    "--webhook-secret", envvar="KLING_WEBHOOK_SECRET", default=None, help="whsec_... to sign callbacks."
)
@click.option("--image-width", default=64, show_default=True, type=click.IntRange(1))
@click.option("--image-height", default=64, show_default=True, type=click.IntRange(1))
@click.option("--image-bytes", default=None, type=click.IntRange(0), help="Pad each PNG to this many bytes.")
@click.option(
    "--retention-seconds", default=None, type=click.FloatRange(0), help="Image URLs 404 after this."
)
@click.option("--seed", default=None, type=int, help="Seed of the fault dice.")
@click.option(
    "--set",
    "extra",
    multiple=True,
    metavar="KNOB=JSON",
    help="Any other SimulatorConfig knob, value in JSON (e.g. --set fault_5000_rate=0.1). Repeatable.",
)
def simulator(
    *,
    host: str,
    port: int,
    public_url: str | None,
    access_key: str | None,
    secret_key: str | None,
    api_key: str | None,
    subscription_key: str | None,
    concurrency: int,
    task_seconds: float,
    webhook_secret: str | None,
    image_width: int,
    image_height: int,
    image_bytes: int | None,
    retention_seconds: float | None,
    seed: int | None,
    extra: tuple[str, ...],
) -> None:
    """Serve the Kling simulator (official API, Appy Pie gateway, /_sim inspection) until stopped."""
    import json

    from kling.simulator import Simulator, SimulatorConfig

    knobs: dict[str, object] = {}
    for item in extra:
        name, sep, raw = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r} is not KNOB=JSON", param_hint="--set")
        try:
            knobs[name.strip()] = json.loads(raw)
        except ValueError:
            knobs[name.strip()] = raw  # a bare string such as a marker
    if bool(access_key) != bool(secret_key):
        raise click.UsageError("--access-key and --secret-key go together")
    try:
        config = SimulatorConfig(
            host=host,
            port=port,
            public_url=public_url,
            access_key=access_key,
            secret_key=secret_key,
            api_key=api_key,
            subscription_key=subscription_key,
            concurrency=concurrency,
            task_seconds=task_seconds,
            webhook_secret=webhook_secret,
            image_width=image_width,
            image_height=image_height,
            image_bytes=image_bytes,
            retention_seconds=retention_seconds,
            seed=seed,
        ).updated(**knobs)
        sim = Simulator(config).start()
    except (TypeError, ValueError) as exc:
        raise click.UsageError(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None

    listening = f"Kling simulator listening on {sim.base_url} (inspect: {sim.base_url}/_sim/stats)"
    try:
        wait_for_stop(ready=lambda: click.echo(listening, err=True))
    finally:
        sim.stop()
