"""``python -m bastion.cli``."""

from __future__ import annotations

from bastion.cli import main

main()
