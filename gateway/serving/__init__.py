"""The gateway's own HTTP/1.1 server (httptools), in aiohttp's place at the socket."""
from gateway.serving.server import HttpServer

__all__ = ["HttpServer"]
