"""`attachfs`: the Typer app, assembled from the service commands (`cli/service.py`: serve,
api, agent, image list) and the client commands (`cli/client.py`: server, share), which talk
HTTP to --url (ATTACHFS_URL) with the noauth token --token (ATTACHFS_TOKEN,
"user:project[:roles]") at compute API microversion 2.97.
"""

from __future__ import annotations

from typing import Annotated

import typer

from attachfs.cli import client, service
from attachfs.cli.apiclient import DEFAULT_TOKEN, DEFAULT_URL

HELP = ("Attach shared filesystems to VMs through the host. Client commands talk to --url "
        "with the noauth token --token (user:project[:roles]) at compute API 2.97.")
app = typer.Typer(name="attachfs", help=HELP, no_args_is_help=True, add_completion=False,
                  pretty_exceptions_show_locals=False)


@app.callback()
def main(
    ctx: typer.Context,
    url: Annotated[str, typer.Option(envvar="ATTACHFS_URL", help="API endpoint.")] = DEFAULT_URL,
    token: Annotated[str, typer.Option(envvar="ATTACHFS_TOKEN",
                                       help="noauth token user:project[:roles].")] = DEFAULT_TOKEN,
) -> None:
    ctx.obj = client.Settings(url.rstrip("/"), token)


service.register(app)
client.register(app)

if __name__ == "__main__":
    app()
