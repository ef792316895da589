"""Storage: contracts (:mod:`.protocols`) and the backends that implement them."""

from __future__ import annotations
