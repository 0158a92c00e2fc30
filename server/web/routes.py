"""The dashboard's route table: every page, its access and its place in the navigation.

Kept apart from the REST route table (`fleetcast.server.api.routes`): these answer
HTML for people and are not in the OpenAPI document. A new page is one row here,
one view in `views.py` and one template.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from fleetcast.server.web import pages as p
from fleetcast.server.web.keys import NavItem
from fleetcast.server.web.pages import Handler

Access = Literal["public", "viewer", "operator"]


@dataclass(frozen=True)
class Page:
    method: str
    path: str
    handler: Handler
    access: Access
    nav: str = ""          # the navigation label, for pages listed there


PAGES: Final[tuple[Page, ...]] = (
    Page("GET", "/", p.root, "public"),
    Page("GET", "/ui/login", p.login_form, "public"),
    Page("POST", "/ui/login", p.login, "public"),
    Page("POST", "/ui/logout", p.logout, "viewer"),
    Page("GET", "/ui/", p.overview, "viewer", nav="Overview"),
    Page("GET", "/ui/devices", p.devices, "viewer", nav="Devices"),
    Page("GET", "/ui/devices.csv", p.devices_csv, "viewer"),
    Page("GET", "/ui/devices/{id}", p.device, "viewer"),
    Page("GET", "/ui/models", p.models, "viewer", nav="Models"),
    Page("GET", "/ui/models/{name}", p.model, "viewer"),
    Page("GET", "/ui/deployments", p.deployments, "viewer", nav="Deployments"),
    Page("GET", "/ui/deployments/{id}", p.deployment, "viewer"),
    Page("POST", "/ui/deployments/{id}/cancel", p.cancel_deployment, "operator"),
    Page("GET", "/ui/rollouts", p.rollouts, "viewer", nav="Rollouts"),
    Page("GET", "/ui/rollouts/{id}", p.rollout, "viewer"),
    Page("GET", "/ui/events", p.events, "viewer"),
)

NAV: Final = tuple(NavItem(page.nav, page.path) for page in PAGES if page.nav)
