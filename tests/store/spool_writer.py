"""A process that appends call records to a spool and prints `ACK <id>` after each append returned.

Used by the spool's fault tests: the test kills it mid-burst, or gives it a disk that fills up.

    python -m tests.store.spool_writer SPOOL COUNT RECORD_BYTES [--fsize-limit BYTES]

`--fsize-limit` caps the size of any file it writes (RLIMIT_FSIZE), for machines where a test cannot mount
a small file system: writes beyond it fail with EFBIG, as a full disk fails them with ENOSPC.
"""

import argparse
import resource
import signal
import sys
from pathlib import Path

from loraforge.store.spool import Spool
from tests.store.calls import chat_call


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("spool", type=Path)
    parser.add_argument("count", type=int)
    parser.add_argument("record_bytes", type=int)
    parser.add_argument("--fsize-limit", type=int)
    args = parser.parse_args()
    if args.fsize_limit:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (args.fsize_limit, resource.RLIM_INFINITY))
    spool = Spool(args.spool)
    i = 0
    while i < args.count:
        batch = [
            chat_call("spooled", f"q{i + j}", "x" * args.record_bytes, seq=i + j) for j in range(1 + i % 3)
        ]
        i += len(batch)
        try:
            spool.append(batch)
        except OSError as exc:
            print(f"ERR {exc.errno}", flush=True)
            continue
        print("\n".join(f"ACK {r['id']}" for r in batch), flush=True)


if __name__ == "__main__":
    sys.exit(main())
