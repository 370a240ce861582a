"""Errors of the ESX lab (:mod:`vmkeep.lab`)."""

from __future__ import annotations

from vmkeep.errors import VmkeepError


class LabError(VmkeepError):
    """ESX lab: {}"""

    exit_code = 1


class LabUnavailable(LabError):
    """ESX lab unavailable: {}"""


class LabNotRunning(LabError):
    """ESX lab is not running (start it with `vmkeep lab up`)"""
