"""``campaignctl serve``"""

from __future__ import annotations

from typing import Optional

import typer

from campaignctl.cli.common import duration, engine, info, stop_on_sigterm


def serve(ctx: typer.Context,
          host: str = typer.Option("127.0.0.1", "--host", help="Address to bind."),
          port: int = typer.Option(8080, "--port", min=0, max=65535, metavar="PORT", help="Port to bind (0: any free port)."),
          no_mqtt: bool = typer.Option(False, "--no-mqtt", help="Do not run the MQTT state listeners."),
          share: Optional[str] = typer.Option(None, "--share", metavar="GROUP",
                                              help="MQTT listeners join this shared-subscription group: several "
                                                   "serve split the state messages between them."),
          access_log: bool = typer.Option(False, "--access-log", help="Log every request on stderr."),
          engine_interval: str = typer.Option("2s", "--engine-interval", metavar="DURATION",
                                              help="Time between two passes of the rollout engine."),
          no_engine: bool = typer.Option(False, "--no-engine", help="Do not run the rollout engine."),
          max_connections: Optional[int] = typer.Option(None, "--max-connections", metavar="N",
                                                        help="Open connections at most; beyond, the one idle the "
                                                             "longest is closed [default: the open-file limit, "
                                                             "less a reserve]."),
          header_timeout: str = typer.Option("10s", "--header-timeout", metavar="DURATION",
                                             help="Time a client has to send a whole request (line, headers, "
                                                  "body) once started."),
          keep_alive: str = typer.Option("5s", "--keep-alive", metavar="DURATION",
                                         help="Time an idle connection is kept open waiting for a request."),
          openapi: bool = typer.Option(False, "--openapi", help="Print the OpenAPI description and exit.")) -> None:
    """Run the HTTP device API and the MQTT state listeners until interrupted."""
    if share is not None:
        from campaignctl.listen import check_share

        check_share(share)
    db = engine(ctx)
    if openapi:
        import json

        from campaignctl.server import create_app

        typer.echo(json.dumps(create_app(db).openapi(), indent=2))
        return
    from campaignctl.server import Server

    stop_on_sigterm()
    interval = None if no_engine else duration(engine_interval, "--engine-interval")
    server = Server(db, host, port, listen_mqtt=not no_mqtt, engine_interval=interval, info=info,
                    warn=lambda m: info(f"warning: {m}"), access_log=access_log, share=share,
                    max_connections=max_connections, header_timeout=duration(header_timeout, "--header-timeout"),
                    keep_alive=duration(keep_alive, "--keep-alive")).start()
    info(f"serving the device API on http://{host}:{server.port} (OpenAPI: /docs, /openapi.json); Ctrl-C stops")
    try:
        server.wait()
    except KeyboardInterrupt:
        info("stopped")
