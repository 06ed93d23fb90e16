"""The emulated shared-file-system service: the API subset the openstack CLI and openstacksdk
use, served for the built-in shares at /share/v2 (point clouds.yaml's
`shared_file_system_endpoint_override` here). Its own package: a second service the app mounts
beside the compute API (api/routers.py).

    versions.py   microversions (`X-OpenStack-Manila-API-Version`), echoed by ShareRoute
    discovery.py  version documents and the one share type
    views.py      share and export location bodies
    create.py     the create body's checks
    shares.py     list, show, export locations, create, delete

Same database, policy (`attachfs:os-filesystem:*`) and authentication as the compute API; a
project sees its own shares and the global ones (admins: all with `all_tenants=1`).
Bodies and faults are the shared-file-system service's, microversions 2.0 … 2.98 through
`X-OpenStack-Manila-API-Version` (echoed in the response, as that service does).

What is honestly different from that service:
- The only protocol is `LOCAL`: a directory on this host, handed to guests over virtio-fs.
  A create asking for NFS, CEPHFS, … is refused (400) rather than recorded as something the
  share is not.
- Names are required to be unique in their namespace (the project's shares; the global ones)
  and of the os-filesystem form `[A-Za-z0-9][A-Za-z0-9._-]*` (the same share is also
  `/v2.1/os-filesystem/{name}`); a share created without a name is named after its id.
  `is_public: true` creates a share of global scope (admins only).
- Descriptions, metadata, snapshots, share networks, groups and access rules are not kept:
  a create asking for them is refused (400); the views show them empty.
- One share type, `default` (driver_handles_share_servers False).
"""

from fastapi import APIRouter

from attachfs.shareservice import discovery, shares

ROUTERS: list[APIRouter] = [discovery.router, shares.router]
