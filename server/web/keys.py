"""The dashboard's shared state under one typed app key, and the request's session."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import jinja2
from aiohttp import web

from fleetcast.server.config import DashboardConfig
from fleetcast.server.services import Services
from fleetcast.server.viewertokens import ViewerTokens
from fleetcast.server.web.events import Events
from fleetcast.server.web.sessions import LoginThrottle, Role, Session, Sessions, same_token


@dataclass(frozen=True)
class NavItem:
    label: str
    path: str


@dataclass(frozen=True)
class Dashboard:
    services: Services
    config: DashboardConfig
    env: jinja2.Environment
    sessions: Sessions
    throttle: LoginThrottle
    viewer_tokens: ViewerTokens
    events: Events
    nav: Sequence[NavItem]

    def role_of(self, token: str) -> Role | None:
        """The role a pasted token logs in with: operator, viewer, or None (refused)."""
        if not token:
            return None
        if same_token(token, self.services.operator_token):
            return "operator"
        return "viewer" if self.viewer_tokens.accepts(token) else None


DASHBOARD = web.AppKey("dashboard", Dashboard)
SESSION = web.RequestKey("session", Session)
