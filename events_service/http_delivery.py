"""POSTs webhook bodies over HTTP (aiohttp): one session per process."""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp


class AiohttpEventPoster:
    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=128, ttl_dns_cache=60), skip_auto_headers=("User-Agent",)
            )
        return self._session

    async def post(self, url: str, body: bytes, headers: Mapping[str, str], timeout_s: float) -> str:
        try:
            async with self._http().post(
                url,
                data=body,
                headers={**headers, "User-Agent": "rewards-webhooks/1"},
                timeout=aiohttp.ClientTimeout(total=timeout_s),
                allow_redirects=False,  # a redirect is an answer that is not 2xx
            ) as response:
                await response.read()
                return "" if 200 <= response.status < 300 else f"HTTP {response.status}"
        except TimeoutError:
            return f"timeout ({timeout_s:g} s)"
        except aiohttp.ClientError as error:
            return f"{error.__class__.__name__}: {error}"[:300]

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
