"""``campaignctl serve``"""

from __future__ import annotations

from typing import Optional

import typer

from campaignctl.cli.common import duration, engine, stop_on_sigterm
from campaignctl.cli.logging_options import LogFormat, LogFormatOption, LogLevel, LogLevelOption, start_logging


def serve(
    ctx: typer.Context,
    host: str = typer.Option("127.0.0.1", "--host", metavar="HOST", help="Address to bind."),
    port: int = typer.Option(8080, "--port", min=0, max=65535, metavar="PORT", help="Port to bind (0: any free port)."),
    no_mqtt: bool = typer.Option(False, "--no-mqtt", help="Do not run the MQTT state listeners."),
    share: Optional[str] = typer.Option(
        None,
        "--share",
        metavar="GROUP",
        help="MQTT listeners join this shared-subscription group: several serve split the state messages between them.",
    ),
    access_log: bool = typer.Option(False, "--access-log", help="Log every request on stderr."),
    engine_interval: str = typer.Option(
        "2s", "--engine-interval", metavar="DURATION", help="Time between two passes of the rollout engine."
    ),
    no_engine: bool = typer.Option(False, "--no-engine", help="Do not run the rollout engine."),
    max_connections: Optional[int] = typer.Option(
        None,
        "--max-connections",
        metavar="N",
        help="Open connections at most; beyond, the one idle the "
        "longest is closed [default: the open-file limit, "
        "less a reserve].",
    ),
    header_timeout: str = typer.Option(
        "10s",
        "--header-timeout",
        metavar="DURATION",
        help="Time a client has to send a whole request (line, headers, body) once started.",
    ),
    keep_alive: str = typer.Option(
        "5s", "--keep-alive", metavar="DURATION", help="Time an idle connection is kept open waiting for a request."
    ),
    metrics_token_env: Optional[str] = typer.Option(
        None,
        "--metrics-token-env",
        metavar="NAME",
        help="GET /metrics wants Authorization: Bearer with the token in this environment variable "
        "[default: /metrics is open].",
    ),
    public_url: Optional[str] = typer.Option(
        None,
        "--public-url",
        metavar="URL",
        help="Where browsers reach the web front-end, e.g. https://campaigns.example.com behind a TLS proxy: "
        "form posts must come from this origin, and with https the session cookie is Secure.",
    ),
    log_level: LogLevel = LogLevelOption,
    log_format: LogFormat = LogFormatOption,
    openapi: bool = typer.Option(False, "--openapi", help="Print the OpenAPI description and exit."),
) -> None:
    """Run the HTTP device API (with Prometheus metrics on /metrics) and the MQTT state
    listeners until interrupted."""
    if share is not None:
        from campaignctl.listen import check_share

        check_share(share)
    if public_url is not None:
        from campaignctl.web.sessions import public_origin

        public_origin(public_url)  # refused before anything starts
    db = engine(ctx)
    if openapi:
        import json

        from campaignctl.server import create_app

        typer.echo(json.dumps(create_app(db).openapi(), indent=2))
        return
    from campaignctl.server import Server, read_metrics_token

    token = None if metrics_token_env is None else read_metrics_token(metrics_token_env)
    interval = None if no_engine else duration(engine_interval, "--engine-interval")
    timeouts = {
        "header_timeout": duration(header_timeout, "--header-timeout"),
        "keep_alive": duration(keep_alive, "--keep-alive"),
    }
    log = start_logging(log_level, log_format, access_log=access_log)
    stop_on_sigterm()
    server = Server(
        db,
        host,
        port,
        listen_mqtt=not no_mqtt,
        engine_interval=interval,
        info=log.info,
        warn=log.warning,
        access_log=access_log,
        share=share,
        max_connections=max_connections,
        metrics_token=token,
        public_url=public_url,
        **timeouts,
    ).start()
    log.info(server.description())
    try:
        server.wait()
    except KeyboardInterrupt:
        log.info("stopped")
