"""Whether this machine's kernel can encrypt swarm's overlay traffic, and the choice made of it.

Docker encrypts an overlay network (`--opt encrypted`) with IPsec ESP in the kernel, set up by
each node for its peers; a kernel without ESP cannot carry such a network's traffic between
nodes (some cloud VMs' kernels lack it; so does the one the tests run on). The probe asks the kernel for
one ESP state with the cipher Docker uses (AES-GCM, RFC 4106) in a network namespace of its own,
so it changes nothing on the machine.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

CHOICES = ("auto", "on", "off")
# ip xfrm state add: a throwaway ESP state with Docker's cipher, in a new network namespace.
PROBE = ["unshare", "--net", "ip", "xfrm", "state", "add", "src", "192.0.2.1", "dst", "192.0.2.2", "proto", "esp",
         "spi", "0x100", "aead", "rfc4106(gcm(aes))", "0x" + "11" * 20, "128"]


@dataclass(frozen=True)
class Encryption:
    on: bool
    why: str  # said at start


def esp_supported() -> tuple[bool, str]:
    """(whether the kernel takes an ESP state, what it said when it did not)."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False, "no `unshare` or `ip` (iproute2) to ask the kernel with"
    try:
        probe = subprocess.run(PROBE, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as err:
        return False, str(err)
    return probe.returncode == 0, probe.stderr.strip()


def choose(setting: str, supported: bool, said: str = "") -> Encryption:
    """The overlay encryption in use for the `overlay_encryption` setting; "on" where the kernel
    cannot do it is refused (a network whose traffic never arrives would look like a bug in
    the apps)."""
    if setting == "off":
        return Encryption(False, "off (overlay_encryption = off)")
    if supported:
        return Encryption(True, "on: traffic between nodes on the overlay networks is encrypted (IPsec ESP)")
    if setting == "on":
        raise ValueError("overlay_encryption is on, but this kernel has no IPsec ESP, which encrypted overlay "
                         f"networks need ({said or 'the probe failed'}): set it to auto or off")
    return Encryption(False, "off: this kernel has no IPsec ESP, which encrypted overlay networks need; traffic "
                      "between nodes crosses the network in clear (keep it on a private network)")
