"""`ironflow groups ...` and `ironflow topics ...`: consumer groups and topic statistics.

`cli.build_app()` adds the two sub-apps; the commands share its plumbing (global options, errors on
stderr with exit code 1, JSON and table output). The import of `cli` is circular on purpose and only
touched when a command runs, so either module may be imported first.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Column, Table
from rich.text import Text

from . import cli
from ._durations import to_seconds
from ._models import ConsumerGroup, TopicInfo

JsonFlag = Annotated[bool, typer.Option("--json", help="Machine-readable JSON output.")]


def groups_app() -> typer.Typer:
    app = typer.Typer(
        help="Consumer groups: subscribers that share a pattern's messages, each message going to one.",
        no_args_is_help=True,
    )

    @app.command("list")
    def groups_list(ctx: typer.Context, json_: JsonFlag = False) -> None:
        """List consumer groups, by name."""
        groups = cli._with_client(ctx, lambda c: c.list_consumer_groups())
        if _wants_json(ctx, json_):
            cli._print_json([_group_json(group) for group in groups])
            return
        if not groups:
            cli.stdout.print("no consumer groups", highlight=False)
            return
        table = Table(
            Column("name", overflow="fold"),
            Column("pattern", overflow="fold"),
            "filter",
            "start",
            "ack wait",
            "max deliver",
            "max in flight",
            "pending",
            "members",
        )
        for group in groups:
            table.add_row(
                Text(group.name),
                Text(group.pattern),
                Text(cli._short(group.filter, 40)),
                Text(group.start),
                _format_duration(group.ack_wait),
                str(group.max_deliver),
                str(group.max_in_flight),
                str(group.pending),
                str(group.members),
            )
        cli._print_table(table)

    @app.command("get")
    def groups_get(
        ctx: typer.Context, name: Annotated[str, typer.Argument()], json_: JsonFlag = False
    ) -> None:
        """Show one consumer group: its settings, pending messages and members."""
        group = cli._with_client(ctx, lambda c: c.get_consumer_group(name))
        _show_group(ctx, group, json_)

    @app.command("create")
    def groups_create(  # noqa: PLR0917 - typer commands take one parameter per CLI option
        ctx: typer.Context,
        name: Annotated[str, typer.Argument(help="Letters, digits, '_' or '-', at most 64.")],
        pattern: Annotated[
            str, typer.Option("--pattern", help="What the group delivers, e.g. events:order.*.")
        ],
        filter_: Annotated[
            str | None, typer.Option("--filter", help="CEL expression, e.g. 'data.total > 100'.")
        ] = None,
        start: Annotated[
            str, typer.Option("--start", help="new, earliest, or a stream sequence to start after.")
        ] = "new",
        ack_wait: Annotated[
            str, typer.Option("--ack-wait", help="Time to ack before redelivery, e.g. 30s, 5m.")
        ] = "30s",
        max_deliver: Annotated[
            int, typer.Option("--max-deliver", min=1, help="Deliveries before a message is dead-lettered.")
        ] = 5,
        max_in_flight: Annotated[
            int, typer.Option("--max-in-flight", min=1, help="Unacked messages one member may hold.")
        ] = 1000,
        json_: JsonFlag = False,
    ) -> None:
        """Create a consumer group (the same settings again: no change; different ones: an error)."""
        try:
            wait = to_seconds(ack_wait, field="ack_wait")
        except ValueError as exc:
            raise typer.BadParameter(str(exc).removeprefix("ack_wait: "), param_hint="'--ack-wait'") from None
        group = cli._with_client(
            ctx,
            lambda c: c.create_consumer_group(
                name,
                pattern,
                filter=filter_,
                start=start,
                ack_wait=wait,
                max_deliver=max_deliver,
                max_in_flight=max_in_flight,
            ),
        )
        _show_group(ctx, group, json_)

    @app.command("delete")
    def groups_delete(
        ctx: typer.Context, name: Annotated[str, typer.Argument()], json_: JsonFlag = False
    ) -> None:
        """Delete a consumer group and its progress; connected members are ended."""
        cli._with_client(ctx, lambda c: c.delete_consumer_group(name))
        if _wants_json(ctx, json_):
            cli._print_json({"name": name, "deleted": True})
        else:
            cli.stdout.print(f"consumer group {escape(name)} deleted", highlight=False)

    @app.command("replay-dead-letters")
    def groups_replay_dead_letters(
        ctx: typer.Context,
        name: Annotated[str, typer.Argument()],
        limit: Annotated[
            int | None, typer.Option("--limit", min=1, help="Replay at most this many [all].")
        ] = None,
        json_: JsonFlag = False,
    ) -> None:
        """Deliver a group's dead-lettered messages to its members again."""
        replayed = cli._with_client(ctx, lambda c: c.replay_dead_letters(name, limit=limit))
        if _wants_json(ctx, json_):
            cli._print_json({"group": name, "replayed": replayed})
        else:
            noun = "message" if replayed == 1 else "messages"
            cli.stdout.print(
                f"replayed {replayed} dead-lettered {noun} of consumer group {escape(name)}",
                highlight=False,
            )

    return app


def topics_app() -> typer.Typer:
    app = typer.Typer(
        help="Event names and topics that have carried messages, with counts.", no_args_is_help=True
    )

    @app.command("list")
    def topics_list(
        ctx: typer.Context,
        pattern: Annotated[
            str | None, typer.Argument(help="Only subjects matching this, e.g. 'topic:>', 'events:order.*'.")
        ] = None,
        limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 100,
        cursor: Annotated[str | None, typer.Option("--cursor", help="Continue from a previous page.")] = None,
        json_: JsonFlag = False,
    ) -> None:
        """List event names and topics, by subject, with message counts."""
        page = cli._with_client(ctx, lambda c: c.list_topics(pattern, limit=limit, cursor=cursor))
        if _wants_json(ctx, json_):
            cli._print_json(page)
            return
        table = Table(
            Column("subject", overflow="fold"),
            "messages",
            "first seq",
            "last seq",
            "first (UTC)",
            "last (UTC)",
            "subscribers",
        )
        for topic in page.topics:
            table.add_row(
                Text(topic.subject),
                str(topic.messages),
                str(topic.first_sequence),
                str(topic.last_sequence),
                cli._stamp(topic.first_message_at),
                cli._stamp(topic.last_message_at),
                str(topic.subscribers),
            )
        cli._print_table(table)
        if page.next_cursor:
            cli.stdout.print(f"more: --cursor {page.next_cursor}", highlight=False, soft_wrap=True)

    @app.command("stats")
    def topics_stats(
        ctx: typer.Context,
        subject: Annotated[str, typer.Argument(help="A subject (not a pattern), e.g. events:order.placed.")],
        json_: JsonFlag = False,
    ) -> None:
        """Show one subject's counts, first and last message, and live subscribers."""
        topic = cli._with_client(ctx, lambda c: c.get_topic_stats(subject))
        if _wants_json(ctx, json_):
            cli._print_json(topic)
        else:
            _print_topic(topic)

    return app


def _wants_json(ctx: typer.Context, json_: bool) -> bool:
    return json_ or cli._options(ctx).json


def _group_json(group: ConsumerGroup) -> dict[str, Any]:
    """The group as JSON; `ack_wait` in seconds."""
    value: dict[str, Any] = cli._to_json(group)
    value["ack_wait"] = group.ack_wait.total_seconds()
    return value


def _show_group(ctx: typer.Context, group: ConsumerGroup, json_: bool) -> None:
    if _wants_json(ctx, json_):
        cli._print_json(_group_json(group))
        return
    _print_grid(
        [
            ("group", group.name),
            ("pattern", group.pattern),
            ("filter", group.filter or "-"),
            ("start", group.start),
            ("ack wait", _format_duration(group.ack_wait)),
            ("max deliver", str(group.max_deliver)),
            ("max in flight", str(group.max_in_flight)),
            ("created", cli._stamp(group.created_at) or "-"),
            ("pending", str(group.pending)),
            ("members", str(group.members)),
            ("dead letters", group.dead_letter_subject),
        ]
    )


def _print_topic(topic: TopicInfo) -> None:
    _print_grid(
        [
            ("subject", topic.subject),
            ("messages", str(topic.messages)),
            ("first sequence", str(topic.first_sequence)),
            ("last sequence", str(topic.last_sequence)),
            ("first message", cli._stamp(topic.first_message_at) or "-"),
            ("last message", cli._stamp(topic.last_message_at) or "-"),
            ("subscribers", str(topic.subscribers)),
        ]
    )


def _print_grid(rows: list[tuple[str, str]]) -> None:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    for key, value in rows:
        grid.add_row(key, Text(value))
    cli.stdout.print(grid)


def _format_duration(value: timedelta) -> str:
    """30s, 500ms, 1m30s, 2h: the way durations are typed."""
    millis = round(value.total_seconds() * 1000)
    if millis % 1000:
        return f"{value.total_seconds():g}s" if millis > 1000 else f"{millis}ms"
    seconds = millis // 1000
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{hours}h" if hours else "", f"{minutes}m" if minutes else "", f"{secs}s" if secs else ""]
    return "".join(parts) or "0s"
