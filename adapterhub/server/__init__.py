"""``adapterhub serve``: the registry over HTTP, behind scoped tokens (the optional extra ``[server]``).

- :mod:`.app` builds the FastAPI application over one :class:`~adapterhub.registry.registry.Registry`;
- :mod:`.run` starts uvicorn (``--workers N`` processes; the server is stateless, so several processes,
  on one machine or many, over one PostgreSQL + S3 behave as one registry).

Clients talk to it with :class:`adapterhub.registry.client.HttpRegistry` (an ``http(s)://`` remote).
"""
