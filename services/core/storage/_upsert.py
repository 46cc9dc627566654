"""`INSERT ... ON CONFLICT DO NOTHING RETURNING`, portable across SQLite and Postgres."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite


def insert_or_ignore(
    table: sa.Table,
    values: Mapping[str, Any],
    *,
    dialect: str,
    conflict_columns: Sequence[str],
    conflict_where: sa.ColumnElement[bool] | None = None,
) -> Any:
    """An insert that silently skips a row colliding on `conflict_columns` (a unique index).

    Callers add `.returning(...)`: an empty result means the row already existed, which is how an
    idempotent replay is told apart from a first write.
    """
    statement: Any = postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)
    return statement.values(**values).on_conflict_do_nothing(
        index_elements=list(conflict_columns), index_where=conflict_where
    )
