"""Maps the top-level folders onto the `fleetcast` namespace.

The folders keep the short names the design draws (`server/`, `agent/`, `sdk/`,
`proto/`); installed, they become `fleetcast.server`, `fleetcast.agent`, ... so a
device that installs the agent never claims a global module named `agent`.
pyproject.toml cannot list sub-packages of a remapped folder by itself, hence this file.
"""

from setuptools import find_packages, setup

ROLES = ("server", "agent", "sdk", "proto")

packages: list[str] = []
package_dir: dict[str, str] = {}
for role in ROLES:
    package_dir[f"fleetcast.{role}"] = role
    packages.append(f"fleetcast.{role}")
    packages.extend(f"fleetcast.{role}.{sub}" for sub in find_packages(role))

setup(
    packages=packages,
    package_dir=package_dir,
    package_data={"fleetcast.proto": ["*.proto", "v1/*.proto"],
                  "fleetcast.server.web": ["templates/*.html", "static/*.*", "static/vendor/*", "static/vendor/licenses/*"]},
)
