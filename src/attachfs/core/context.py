"""Who is asking (`RequestContext`) and what a share looks like to the core (`ShareInfo`).

Both are defined with the storage interfaces today (storage/base.py: providers take them);
the core names them from here so nothing in core/ depends on where they are defined.
"""

from attachfs.storage.base import RequestContext as RequestContext
from attachfs.storage.base import ShareInfo as ShareInfo
