"""`cds serve --workers N`: each worker serves a socket the supervisor made with `socket.fromfd`
(proto 0), on which asyncio leaves Nagle's algorithm on; every response then waited 40 ms for the
client's delayed ACK. The server's protocol turns it off."""

from __future__ import annotations

import asyncio
import socket

from cds.server import no_delay


def test_a_connection_on_an_inherited_socket_gets_tcp_nodelay() -> None:
    async def main() -> tuple[int, int]:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        inherited = socket.fromfd(listener.fileno(), socket.AF_INET, socket.SOCK_STREAM)  # as uvicorn
        listener.close()
        seen: asyncio.Future[tuple[int, int]] = asyncio.get_running_loop().create_future()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                sock = transport.get_extra_info("socket")
                before = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                no_delay(transport)
                seen.set_result((before, sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)))

        server = await asyncio.get_running_loop().create_server(Probe, sock=inherited)
        port = inherited.getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            return await asyncio.wait_for(seen, 5)
        finally:
            writer.close()
            server.close()

    before, after = asyncio.run(main())
    assert before == 0  # what asyncio leaves on such a socket: the 40 ms per response
    assert after != 0
