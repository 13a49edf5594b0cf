"""Commands of flow control: ``pause`` and ``resume`` (the queue, or one job class)."""
from __future__ import annotations

from typing import Any

import click

from core import flow, queue
from jobdeck.command import actor, cli, config_option, load_config, run_with_database
from jobdeck.output import print_json

__all__ = ["pause", "resume"]

_WAIT = click.option("--wait", type=click.FloatRange(0, 60), default=5.0, show_default=True,
                     help="Seconds to wait for every live worker to acknowledge.")
_JSON = click.option("--json", "as_json", is_flag=True, help="Print the reply as JSON.")


def _change(change: Any, qual_name: str | None, wait: float, as_json: bool) -> None:
    config = load_config()
    reply = run_with_database(config, lambda db: change(db, user=queue.operator(actor()), qual_name=qual_name,
                                                        lease_seconds=config.lease_seconds, wait=wait))
    if as_json:
        print_json(reply)
        return
    paused = reply["flow"]
    what = ", ".join((["the whole queue"] if paused["all"] else []) + paused["classes"]) or "nothing"
    click.echo(f"paused: {what}")
    click.echo(f"acknowledged by {reply['acknowledged']} of {reply['workers']} live workers")
    for worker in reply["unacknowledged"]:
        click.echo(f"warning: worker {worker} has not acknowledged yet; it may start one more job", err=True)


@cli.command()
@click.argument("qual_name", required=False)
@_WAIT
@_JSON
@config_option
def pause(qual_name: str | None, wait: float, as_json: bool) -> None:
    """Pause the whole queue (maintenance), or only job class QUAL_NAME.

    Paused jobs stay pending and no worker starts one; running jobs finish.
    Returns once every live worker has acknowledged. Undo with 'jobdeck resume'.
    """
    _change(flow.pause, qual_name, wait, as_json)


@cli.command()
@click.argument("qual_name", required=False)
@_WAIT
@_JSON
@config_option
def resume(qual_name: str | None, wait: float, as_json: bool) -> None:
    """Resume the whole queue, or job class QUAL_NAME (classes paused one by one stay paused)."""
    _change(flow.resume, qual_name, wait, as_json)
