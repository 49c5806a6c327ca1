"""connmon's Python client: the agent's socket protocol (:class:`Client`,
:class:`AsyncClient`) and a live view of which proxies it has evicted
(:class:`LivePool`, :class:`AsyncLivePool`). Standard library only; the Scrapy
integration is :mod:`connmon.scrapy` (``pip install "connmon[scrapy]"``)."""

from .client import DEFAULT_SOCKET, PROTOCOL_VERSION, AsyncClient, Client, ConnmonError, Message
from .pool import AsyncLivePool, LivePool, PoolView, proxy_key, proxy_keys

__version__ = "0.1.0"
"""The agent's version: the package is released with it."""

__all__ = [
    "DEFAULT_SOCKET",
    "PROTOCOL_VERSION",
    "AsyncClient",
    "AsyncLivePool",
    "Client",
    "ConnmonError",
    "LivePool",
    "Message",
    "PoolView",
    "proxy_key",
    "proxy_keys",
]
