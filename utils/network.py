"""Is a server there at all? Asked once, quickly, before a client library retries for minutes."""
import socket
import threading
import urllib.parse


def reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the URL's host and port opens within `timeout` seconds, name lookup included
    (a resolver that never answers is not bounded by the socket's timeout, so the attempt runs in a thread)."""
    parsed = urllib.parse.urlparse(url)
    opened = threading.Event()

    def connect() -> None:
        try:
            port = parsed.port or (443 if parsed.scheme == "https" else 80)
            socket.create_connection((parsed.hostname, port), timeout=timeout).close()
            opened.set()
        except (OSError, ValueError):
            pass

    attempt = threading.Thread(target=connect, daemon=True)
    attempt.start()
    attempt.join(timeout)  # returns as soon as the attempt ends, refused or connected
    return opened.is_set()
