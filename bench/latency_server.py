"""An HTTP API that answers every request after a fixed latency (webhook benchmark).

python bench/latency_server.py PORT [LATENCY_MS]
"""

from __future__ import annotations

import asyncio
import sys

from aiohttp import web


async def main(port: int, latency: float) -> None:
    async def handle(request: web.Request) -> web.Response:
        await request.read()
        await asyncio.sleep(latency)
        return web.Response(status=204)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=4096).start()
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), float(sys.argv[2] if len(sys.argv) > 2 else 50) / 1000))
