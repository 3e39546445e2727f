"""The broker's sockets, opened by aiormq's own TCP or TLS factory and remembered, so that the bus can close
what an abandoned connection attempt left open.

aiormq closes the socket of a handshake that the broker refuses, but not of one that is cancelled (the bus
closed during start-up, aio-pika's connect timeout) or that fails before the broker's first frame: that
socket stays open until it is garbage-collected, and then warns (ResourceWarning).
"""
from __future__ import annotations

import asyncio
from typing import Any

import aio_pika
from aiormq.connection import TCPTransportFactory, TLSTransportFactory, TransportFactory
from yarl import URL


class TrackedSockets(TransportFactory):
    def __init__(self, url: URL) -> None:
        self._opener: TransportFactory = TLSTransportFactory() if url.scheme == "amqps" else TCPTransportFactory()
        self._writers: list[asyncio.StreamWriter] = []

    @classmethod
    def attach(cls, connection: aio_pika.Connection) -> TrackedSockets:
        """Open every socket of connection (and of its reconnections) through a new tracker."""
        sockets = cls(connection.url)
        # aio-pika keeps only the keyword arguments it knows; what is in .kwargs goes to aiormq.connect().
        connection.kwargs["transport_factory"] = sockets
        return sockets

    async def create(self, url: URL, **kwargs: Any) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await self._opener.create(url, **kwargs)
        # Forget what is already closed, so a long run of reconnections does not grow the list.
        self._writers = [open_writer for open_writer in self._writers if not open_writer.is_closing()]
        self._writers.append(writer)
        return reader, writer

    def close_all(self) -> None:
        """Close every socket still open: only for a connection that is closed or was given up."""
        for writer in self._writers:
            if not writer.is_closing():
                writer.close()
        self._writers.clear()
