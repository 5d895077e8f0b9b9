"""Rollouts: create, inspect, and the manual actions (pause, resume, promote, abort)."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("rollouts", __name__, url_prefix="/v1/rollouts")
