"""The web UI the agent serves at ``/ui/`` (Consul's ``ui_config.enabled``, ``-ui``; on in ``-dev``).

Server-rendered pages (Jinja2 templates) with htmx for the parts that follow the catalog live. The UI is
a client of the agent's public HTTP API and nothing else: every page is built from what ``/v1/...``
answers to the visitor's own token (``registry.client.http``), never from the store or the agent's
objects, so it shows exactly what Consul's API shows that token and works the same on a server, a client
agent or ``-dev``. See docs/ui.md.
"""
