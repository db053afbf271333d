"""Print the newest glibc version the libraries inside a one-file binary ask for: the oldest glibc it runs on.

    python build/glibc_needed.py dist/codexlb

Every library the binary unpacks names the glibc symbol versions it needs (GLIBC_2.x strings in its
version-needs table); the newest of them decides.
"""

from __future__ import annotations

import re
import sys

from PyInstaller.archive.readers import CArchiveReader

_VERSION = re.compile(rb"GLIBC_2\.(\d+)\b")


def needed(binary: str) -> str:
    archive = CArchiveReader(binary)
    minors = [int(minor) for name in archive.toc if ".so" in name
              for minor in _VERSION.findall(archive.extract(name))]
    with open(binary, "rb") as bootloader:
        minors += [int(minor) for minor in _VERSION.findall(bootloader.read())]
    return f"2.{max(minors)}"


if __name__ == "__main__":
    print(needed(sys.argv[1]))
