"""Run the real ssh client, relaying what git sends it so a test can pause or cut a push.

Used as a prefix in GIT_SSH_COMMAND:
    python ssh_relay.py --after 4000 --pause-until FILE -- ssh ...   (stall mid-pack until FILE exists)
    python ssh_relay.py --after 4000 --cut -- ssh ...                (drop the connection mid-pack)
After `--after` bytes it touches `<FILE or cut>.reached` so the test knows the push is in flight.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--after", type=int, required=True)
    parser.add_argument("--pause-until", type=Path)
    parser.add_argument("--cut", type=Path, help="marker file to touch, then drop the connection")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    ssh = subprocess.Popen(command, stdin=subprocess.PIPE)
    assert ssh.stdin is not None
    sent = 0
    stalled = False
    source = sys.stdin.buffer.raw
    while True:
        chunk = source.read(4096)
        if not chunk:
            break
        ssh.stdin.write(chunk)
        ssh.stdin.flush()
        sent += len(chunk)
        if sent >= args.after and not stalled:
            stalled = True
            if args.cut:
                Path(f"{args.cut}.reached").touch()
                ssh.kill()
                ssh.wait()
                return 255
            if args.pause_until:
                Path(f"{args.pause_until}.reached").touch()
                while not args.pause_until.exists():
                    time.sleep(0.05)
    ssh.stdin.close()
    return ssh.wait()


if __name__ == "__main__":
    os.environ.pop("GIT_SSH_COMMAND", None)
    sys.exit(main())
