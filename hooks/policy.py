"""Who may do what to which project, and what a valid project name is.

Shared by every front door (SSH pushes and the REST API), so a rule is written once.
"""

from __future__ import annotations

import re
from enum import Enum

from hooks.errors import Refused
from runtime.store import Store, User

PROJECT_NAME = re.compile(r"[a-z][a-z0-9-]{0,62}")
NAME_RULE = (
    "a project name is a lowercase DNS label: 1 to 63 characters of a-z, 0-9 and '-', "
    "starting with a letter (like 'myapp' or 'my-app-2')"
)


class PolicyError(Refused):
    """A refusal whose message can be shown to the person who asked as it is."""


class Access(Enum):
    READ = "read"
    WRITE = "write"


def project_from_path(path: str) -> str:
    """Turn what git sends ('/myapp.git', 'myapp') into a validated project name."""
    name = path[1:] if path.startswith("/") else path
    return check_project_name(name.removesuffix(".git"))


def check_project_name(name: str) -> str:
    if not PROJECT_NAME.fullmatch(name):
        raise PolicyError(f"invalid project name {name[:80]!r}: {NAME_RULE}")
    return name


def authorize(store: Store, user: User, project: str, access: Access) -> bool:
    """Return whether the project exists; raise PolicyError if the user may not do this.

    Admins may do everything, including creating a project by pushing to it. Deployers may
    read and push only projects granted to them, and never create one.
    """
    exists = store.get_project(project) is not None
    if user.is_admin:
        if not exists and access is Access.READ:
            raise PolicyError(f"project {project!r} does not exist", "not_found")
        return exists
    if not store.has_grant(user.name, project):
        # Same answer whether or not the project exists, so names cannot be probed.
        raise PolicyError(
            f"user {user.name!r} has no access to project {project!r}; "
            f"an admin can grant it with: disco users:grant {user.name} {project}",
            "forbidden",
        )
    if not exists:
        raise PolicyError(
            f"project {project!r} does not exist and only admins can create projects", "forbidden"
        )
    return exists


def visible_projects(store: Store, user: User) -> list[str]:
    """The names of the projects a user may see: all for an admin, their grants for a deployer."""
    names = store.project_names()
    if user.is_admin:
        return names
    granted = set(store.grants_of(user.name))
    return [name for name in names if name in granted]
