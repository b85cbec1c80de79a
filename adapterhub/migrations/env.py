"""Alembic environment. The registry passes an open connection in ``config.attributes["connection"]``
so migrations run inside its own (locked) transaction; the ``alembic`` command line works too with
``-x url=...``."""

from alembic import context
from sqlalchemy import create_engine

from adapterhub.registry.schema import metadata

config = context.config


def run() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    engine = create_engine(url)
    with engine.begin() as conn:
        context.configure(connection=conn, target_metadata=metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()


run()
