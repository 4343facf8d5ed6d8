"""Alembic environment: the URL comes from protocoop's settings (or from `protocoop.db.migrate`),
and connections are made exactly as the service makes them."""

from logging.config import fileConfig
from typing import Any, Literal

from alembic import context

import protocoop.db.models  # noqa: F401  (registers every table on Base.metadata)
from protocoop.config import Settings
from protocoop.db.base import Base, Figure, UTCDateTime
from protocoop.db.engine import make_engine, write_engine

config = context.config
if config.config_file_name and config.attributes.get("configure_logging", True):
    fileConfig(config.config_file_name)

target_metadata = Base.metadata


def _render_item(type_: str, obj: Any, autogen_context: Any) -> str | Literal[False]:
    """Render protocoop's column types as plain SQLAlchemy ones, so migrations never import models."""
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    if type_ == "type" and isinstance(obj, Figure):  # on SQLite: sa.String(38) (see 0005)
        return "sa.Numeric(precision=38, scale=0)"
    return False


def _database_url() -> str:
    return config.get_main_option("sqlalchemy.url") or Settings().database_url


def run_migrations_offline() -> None:
    context.configure(
        url=_database_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    settings = Settings(database_url=_database_url())
    engine = make_engine(settings, pooled=False)
    sqlite = engine.dialect.name == "sqlite"
    try:
        with write_engine(engine).connect() as connection:
            if sqlite:
                # Batch mode rebuilds tables; foreign keys are checked once at the end instead.
                connection.connection.driver_connection.execute("PRAGMA foreign_keys=OFF")  # type: ignore[union-attr]
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                render_as_batch=True,
                transactional_ddl=True,
                compare_type=True,
                render_item=_render_item,
            )
            with context.begin_transaction():
                context.run_migrations()
                if sqlite:
                    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                    if broken:
                        raise RuntimeError(f"migration broke foreign keys: {broken[:5]}")
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
