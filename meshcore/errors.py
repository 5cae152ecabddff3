"""Errors that more than one service raises or catches.

StreamUnavailable   Redis/Valkey refused or dropped us (translated where redis is called)
"""

from __future__ import annotations


class StreamUnavailable(Exception):
    """Redis could not be reached or refused a command."""
