"""A child process for durability tests: writes forever and prints each acknowledged write.

    python durability_writer.py sqlite DATA_DIR TAG [CONCURRENCY]
    python durability_writer.py etcd ENDPOINT TAG [CONCURRENCY]

Each of CONCURRENCY tasks creates keys ``durability/<TAG>/<n>`` one after the other; once ``create``
returned, the task prints ``ACK <key> <revision>`` and flushes, so every line the parent reads is a
write the store acknowledged. A failed write prints ``ERR <key> <error>`` (after it, the key may or may
not exist) and the task goes on with a new key after a short pause. The parent kills this process with
SIGKILL; nothing here cleans up on purpose. ``READY`` is printed once the store is open.
"""

from __future__ import annotations

import asyncio
import itertools
import sys

from innermesh.store.backend import Backend, StoreError
from innermesh.store.etcd import EtcdBackend
from innermesh.store.sqlite import SQLiteBackend

PREFIX = "durability/"
ETCD_KEY_PREFIX = "/durability-test/"


def emit(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def writer(backend: Backend, tag: str, counter: itertools.count[int]) -> None:
    value = b"x" * 100
    while True:
        key = f"{PREFIX}{tag}/{next(counter):08d}"
        try:
            kv = await backend.create(key, value)
        except StoreError as exc:
            emit(f"ERR {key} {type(exc).__name__}")
            await asyncio.sleep(0.05)
            continue
        emit(f"ACK {key} {kv.mod_revision}")


async def main(kind: str, location: str, tag: str, concurrency: int) -> None:
    backend: Backend
    if kind == "sqlite":
        backend = await SQLiteBackend.open(location)
    else:
        backend = await EtcdBackend.open([location], ETCD_KEY_PREFIX, request_timeout=2.0)
    emit("READY")
    counter = itertools.count()
    await asyncio.gather(*(writer(backend, tag, counter) for _ in range(concurrency)))


if __name__ == "__main__":
    arguments = sys.argv[1:]
    if len(arguments) not in (3, 4) or arguments[0] not in ("sqlite", "etcd"):
        sys.exit(__doc__)
    asyncio.run(
        main(arguments[0], arguments[1], arguments[2], int(arguments[3]) if len(arguments) == 4 else 8)
    )
