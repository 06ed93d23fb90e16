"""The real `openstack` command (python-openstackclient + python-manilaclient, in .venv-clients,
installed by scripts/setup-clients.sh), run as a user would: one clouds.yaml named by
OS_CLIENT_CONFIG_FILE, no other OS_* variable of the caller. Used by tests/clients and the
operator's demo (harness/demo_ceph.py).

Two clouds.yaml: `noauth_clouds_yaml` (attachfs's embedded default: auth_type none, endpoint
overrides; docs/openstack-cli.md) and `password_clouds_yaml` (a real Keystone: password auth,
everything found in the catalog; docs/ceph.md).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CLIENTS_VENV = Path(os.environ.get("ATTACHFS_CLIENTS_VENV", ROOT / ".venv-clients"))
OPENSTACK = CLIENTS_VENV / "bin" / "openstack"
CLOUD = "attachfs"  # the cloud's name in the clouds.yaml files below
COMPUTE_VERSION = "2.97"  # server add/remove share, server share list/show
CLI_TIMEOUT = 60  # one command: ~1.5 s is usual


def noauth_clouds_yaml(directory: Path, url: str) -> Path:
    """The clouds.yaml of docs/openstack-cli.md, for an attachfs (noauth) listening at `url`."""
    path = directory / "clouds.yaml"
    path.write_text(f"""clouds:
  {CLOUD}:
    auth_type: none
    identity_endpoint_override: {url}/identity/v3
    compute_endpoint_override: {url}/v2.1
    shared_file_system_endpoint_override: {url}/share/v2
    image_endpoint_override: {url}/image/v2
""")
    return path


def password_clouds_yaml(directory: Path, auth_url: str, user: str, password: str,
                         project: str, region: str) -> Path:
    """A clouds.yaml as a cloud hands it to a user: Keystone's `auth_url` (…/v3), password
    auth scoped to `project`, and `region`; every endpoint comes from the catalog."""
    path = directory / "clouds.yaml"
    path.write_text(f"""clouds:
  {CLOUD}:
    auth_type: password
    auth:
      auth_url: {auth_url}
      username: {user}
      password: {password}
      project_name: {project}
      user_domain_name: Default
      project_domain_name: Default
    region_name: {region}
    interface: public
    identity_api_version: 3
""")
    path.chmod(0o600)  # it holds a password
    return path


class Cli:
    """Runs `openstack ARGS...` as a user who exported OS_CLIENT_CONFIG_FILE=`clouds`,
    OS_CLOUD=attachfs and OS_COMPUTE_API_VERSION=2.97 (what `exports()` prints), and no other
    OS_* variable; HOME is the clouds.yaml's directory, so no ~/.config/openstack is read."""

    def __init__(self, exe: Path, clouds: Path) -> None:
        self.exe = exe
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
        self.env.update(self.variables(clouds))
        self.env["HOME"] = str(clouds.parent)

    @staticmethod
    def variables(clouds: Path) -> dict[str, str]:
        return {"OS_CLIENT_CONFIG_FILE": str(clouds), "OS_CLOUD": CLOUD,
                "OS_COMPUTE_API_VERSION": COMPUTE_VERSION}

    def exports(self) -> str:
        """The shell line that gives a user's `openstack` the same settings."""
        clouds = Path(self.env["OS_CLIENT_CONFIG_FILE"])
        return "export " + " ".join(f"{k}={v}" for k, v in self.variables(clouds).items())

    def run(self, *args: str, timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.exe), *args], capture_output=True, text=True,
                              env=self.env, timeout=timeout)

    def ok(self, *args: str, timeout: float = CLI_TIMEOUT) -> str:
        done = self.run(*args, timeout=timeout)
        assert done.returncode == 0, f"openstack {' '.join(args)}: {done.stderr}{done.stdout}"
        return done.stdout

    def json(self, *args: str, timeout: float = CLI_TIMEOUT) -> Any:
        return json.loads(self.ok(*args, "-f", "json", timeout=timeout))

    def fails(self, *args: str) -> str:
        done = self.run(*args)
        assert done.returncode != 0, f"openstack {' '.join(args)} succeeded: {done.stdout}"
        return done.stderr
