"""Corpora every Python has, for `moedesk data prepare --builtin NAME`.

`pydoc`: the standard library's interactive-help topics (`pydoc_data.topics.topics`,
about 0.46 MB of English prose with code, ~80 topics on Python 3.11). One document per
topic, in sorted order of the topic names, so the corpus (and its sha256 in the
manifest) is fixed for a given Python version; other versions ship slightly other text.
"""

from __future__ import annotations

import hashlib
import sys

BUILTINS = ("pydoc",)


def builtin_documents(name: str) -> tuple[list[str], dict]:
    """(documents, source record for the manifest) of a built-in corpus."""
    if name != "pydoc":
        raise ValueError(f"--builtin: got {name!r}; allowed values: {', '.join(BUILTINS)}")
    from pydoc_data.topics import topics

    docs = [topics[key].strip() + "\n" for key in sorted(topics)]
    data = "".join(docs).encode("utf-8")
    return docs, {"path": f"builtin:pydoc (pydoc_data.topics, Python "
                          f"{sys.version_info.major}.{sys.version_info.minor})",
                  "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                  "documents": len(docs)}
