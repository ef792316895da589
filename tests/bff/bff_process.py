"""A BFF in a process of its own, its sessions in Redis: for the cross-process refresh test.

Usage: ``python -m tests.bff.bff_process SETTINGS_JSON REDIS_URL PREFIX PORT_FILE``
(the client secret comes from ``$BFF_SECRET``). Writes its port to ``PORT_FILE`` once listening.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import aiohttp
import uvicorn

from bastion.bff.app import create_app
from bastion.settings import BFFSettings
from bastion.storage.fast.redis import RedisState

from .harness import bound


async def main(settings_json: str, redis_url: str, prefix: str, port_file: str) -> None:
    settings = BFFSettings.model_validate(json.loads(settings_json))
    state = RedisState(redis_url, prefix=prefix)
    timeout = aiohttp.ClientTimeout(total=10, connect=2)
    async with aiohttp.ClientSession(timeout=timeout, cookie_jar=aiohttp.DummyCookieJar()) as http:
        app = create_app(settings, state=state, http=http, client_secret=os.environ["BFF_SECRET"])
        sock = bound()
        server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False))
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            await asyncio.sleep(0.01)
        Path(port_file).write_text(str(sock.getsockname()[1]))
        await task
    await state.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
