"""tests/manila run against a real Manila (harness/manila.py): the `manila`, `manila_share`,
`manila_keystone` and `manila_cephfs` fixtures live in tests/manila_fixture.py, a plugin of
tests/conftest.py, so that tests/clients gets the same deployment. The names the modules here
import from this package are re-exported (the noauth identity under its older TEST_* names).
"""

from __future__ import annotations

from harness.manila import (
    CEPHFS_TYPE,
    MANILA_PASSWORD,
    MANILA_USER,
    MICROVERSION,
    NOAUTH_PROJECT,
    NOAUTH_TOKEN,
    NOAUTH_USER,
    REGION,
    SERVICE_PROJECT,
    SERVICE_USER,
    KeystoneManila,
    Manila,
    ManilaRest,
)

TEST_USER, TEST_PROJECT, TEST_TOKEN = NOAUTH_USER, NOAUTH_PROJECT, NOAUTH_TOKEN

__all__ = ["CEPHFS_TYPE", "MANILA_PASSWORD", "MANILA_USER", "MICROVERSION", "REGION",
           "SERVICE_PROJECT", "SERVICE_USER", "TEST_PROJECT", "TEST_TOKEN", "TEST_USER",
           "KeystoneManila", "Manila", "ManilaRest"]
