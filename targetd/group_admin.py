"""Consistency groups on the admin socket (``targetctl group ...``).

``group.create``  {name, pairs, target?} -> a group status object
``group.add`` / ``group.remove`` {name, pairs, target?} -> a group status object
``group.delete``  {name, target?} -> {"deleted": name} (its pairs stay)
``group.split`` / ``group.resync`` {name, target?, force?} -> a group status object
``group.status``  {name?, target?} -> one group status object, or a list without a name

A group status object: ``name``, ``target`` (its IQN), ``state`` (the members' common
state, ``MIXED`` or ``EMPTY``), ``split_time``, ``pairs`` (the member names) and
``members`` (their pair status objects). Refusals answer with the
:class:`backing.pairs.ErrorCode` value (``unknown-group``, ``in-group``, ``wrong-state``,
...). Every method goes through the daemon's one :class:`backing.pairs.PairService`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from backing.pairs.groups import GroupStatus
from targetd.admin import Admin, AdminError
from targetd.pair_admin import PairAdmin, Params, _refusals, _str, pair_dict


def group_dict(status: GroupStatus) -> dict[str, Any]:
    out = status.as_dict()
    out["target"] = out.pop("scope")
    out["members"] = [pair_dict(m) for m in status.members]
    return out


def _names(params: Params) -> list[str]:
    value = params.get("pairs")
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise AdminError("pairs: a list of pair names is required", "bad_request")
    return value


class GroupAdmin:
    """The group methods, sharing :class:`PairAdmin`'s service, targets and access."""

    def __init__(self, pairs: PairAdmin) -> None:
        self.pairs = pairs
        self.service = pairs.service

    def register(self, admin: Admin) -> None:
        methods: dict[str, Callable[[Params], Awaitable[Any] | Any]] = {
            "group.create": self.create,
            "group.add": self.add,
            "group.remove": self.remove,
            "group.delete": self.delete,
            "group.split": self.split,
            "group.resync": self.resync,
            "group.restore": self.restore,
            "group.status": self.status,
        }
        for method, handler in methods.items():
            admin.register(method, handler)

    async def create(self, params: Params) -> dict[str, Any]:
        name, members = _str(params, "name"), _names(params)
        target = self.pairs._target(params)
        access = self.pairs._access(params)
        with _refusals():
            return group_dict(await self.service.create_group(name, target, members, access=access))

    async def add(self, params: Params) -> dict[str, Any]:
        name, members, scope = _str(params, "name"), _names(params), self.pairs._scope(params)
        access = self.pairs._access(params)
        with _refusals():
            status = await self.service.add_to_group(name, members, access=access, scope=scope)
        return group_dict(status)

    async def remove(self, params: Params) -> dict[str, Any]:
        name, members, scope = _str(params, "name"), _names(params), self.pairs._scope(params)
        access = self.pairs._access(params)
        with _refusals():
            status = await self.service.remove_from_group(name, members, access=access, scope=scope)
        return group_dict(status)

    async def delete(self, params: Params) -> dict[str, Any]:
        name, scope = _str(params, "name"), self.pairs._scope(params)
        access = self.pairs._access(params)
        with _refusals():
            await self.service.delete_group(name, access=access, scope=scope)
        return {"deleted": name}

    async def split(self, params: Params) -> dict[str, Any]:
        name, scope = _str(params, "name"), self.pairs._scope(params)
        access = self.pairs._access(params)
        with _refusals():
            return group_dict(await self.service.split_group(name, scope, access=access))

    async def resync(self, params: Params) -> dict[str, Any]:
        name, scope = _str(params, "name"), self.pairs._scope(params)
        access = self.pairs._access(params)
        with _refusals():
            return group_dict(await self.service.resync_group(name, scope, access=access))

    async def restore(self, params: Params) -> dict[str, Any]:
        name, scope = _str(params, "name"), self.pairs._scope(params)
        access = self.pairs._access(params)
        with _refusals():
            status = await self.service.reverse_resync_group(name, scope, access=access)
        return group_dict(status)

    def status(self, params: Params) -> dict[str, Any] | list[dict[str, Any]]:
        scope = self.pairs._scope(params)
        if params.get("name") is None:
            return [group_dict(g) for g in self.service.list_groups(scope)]
        name = _str(params, "name")
        with _refusals():
            return group_dict(self.service.group_status(name, scope))
