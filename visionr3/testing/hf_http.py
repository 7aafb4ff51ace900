"""An in-process :class:`~visionr3.rollout.hf.server.HFServer` serving its OpenAI-compatible HTTP endpoint from a
daemon thread's event loop: a real ``vllm serve``-like server on this machine for tests of HTTP clients (the eval
``openai`` backend), without Ray.

    with ServedHF(model_dir) as served:
        client = OpenAI(base_url=served.base_url, api_key="x")
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any


class ServedHF:
    """An HFServer whose event loop runs in a daemon thread; ``call`` runs one of its coroutines there."""

    def __init__(self, model_dir: Any, *, prompt_length: int = 4096, response_length: int = 64, temperature: float = 1.0) -> None:
        from visionr3.rollout.hf.server import HFServer

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="hf-server-loop", daemon=True)
        self.thread.start()
        config = {"prompt_length": prompt_length, "response_length": response_length, "temperature": temperature}
        self.server = HFServer(config=config, model_config=str(model_dir))
        host, port = self.call(self.server.start_http_server())
        self.base_url = f"http://{host}:{port}/v1"

    def call(self, coroutine: Any, timeout: float = 300) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    async def acall(self, coroutine: Any) -> Any:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coroutine, self.loop))

    def close(self) -> None:
        self.call(self.server.stop_http_server(), timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)

    def __enter__(self) -> "ServedHF":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
