"""moto's S3 server in its own process, so the memory it uses for stored objects is not ours.

Prints `listening http://127.0.0.1:PORT` on stdout once ready and serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import signal
import sys
import threading

from moto.server import ThreadedMotoServer


def main() -> None:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"listening http://{host}:{port}", flush=True)
    stop.wait()
    server.stop()
    sys.exit(0)


if __name__ == "__main__":
    main()
